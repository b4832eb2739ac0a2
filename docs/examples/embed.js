'use strict';
// Embedding phaul-fast: a daemon that receives migrations and one that sends
// them, here in one process on 127.0.0.1 for brevity (on two hosts each side
// runs its half). Moves the process tree rooted at PID with the library API and
// prints the report as JSON. Run as root, after `npx phaul-fast check` passes:
//
//   node embed.js PID [MODE]       MODE: auto (default), stop-copy, precopy, hybrid
//
// The tree should be a pid namespace of its own (e.g. started with
// `unshare -pf --fork setsid CMD`): its original stays frozen until the copy
// runs, so on one host their pids must not collide.
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { DestinationAgent, Migration, MigrationError } = require('phaul-fast');

async function main() {
  const pid = Number(process.argv[2]);
  const mode = process.argv[3] || 'auto';
  if (!Number.isInteger(pid) || pid <= 0) throw new Error('usage: node embed.js PID [MODE]');

  // Both sides share a secret; a real deployment reads it with readToken(file).
  const token = crypto.randomBytes(32);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'phaul-embed-'));

  const agent = new DestinationAgent({ host: '127.0.0.1', port: 0, dir, token });
  const { port } = await agent.listen();
  try {
    const m = new Migration({ pid, to: { host: '127.0.0.1', port }, token, mode });
    m.on('phase', (e) => process.stderr.write(`phase ${e.phase} ${e.ms} ms\n`));
    const report = await m.run();
    process.stdout.write(`${JSON.stringify(report)}\n`);
  } finally {
    await agent.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  // MigrationError carries .code (an ExitCode name) and .rolledBack.
  const rolledBack = err instanceof MigrationError ? ` (rolled back: ${err.rolledBack})` : '';
  process.stderr.write(`embed: ${err.message}${rolledBack}\n`);
  process.exitCode = 1;
});
