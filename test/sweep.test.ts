// serve's start-up sweep (src/agent/sweep.ts): what dead agents left behind
// is removed, what a live process still uses is kept, a copy left stopped is
// killed (it never ran), dead agents' claims on a --dir go, and a --dir held
// by a live agent is refused.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { LOCAL_HOST } from '../src/testing/hosts';
import { isAlive, runCmd, waitGone } from '../src/testing/proc';
import { startTime } from '../src/agent/process-tree';
import { dirKey, runPath } from '../src/agent/run-dir';
import { CLI, startServe, tempDir, writeToken } from './helpers/agents';

const root = process.getuid?.() === 0;
const skip = root ? false : 'needs root (serve checks CRIU at start)';

/** A pid that no process has now. */
async function deadPid(): Promise<number> {
  const p = spawn('true');
  await new Promise((r) => p.once('exit', r));
  return p.pid!;
}

test('serve sweeps session dirs, dead agents\' stores and stopped copies at start-up, and keeps what is in use', { skip }, async () => {
  const dir = tempDir('sweep');
  const dest = path.join(dir, 'dest');
  const stale = path.join(dest, 'a'.repeat(24));
  const busy = path.join(dest, 'b'.repeat(24));
  const store = path.join('/dev/shm', `phaul-fast-store-${await deadPid()}-test`);
  const stopped = spawn('sleep', ['1000'], { stdio: 'ignore' });
  // Claims on a --dir: one of an agent killed without giving it up, one of a live agent (this test process).
  const deadClaim = runPath(`serve-${'d'.repeat(32)}.pid`);
  const liveClaim = runPath(`serve-${'e'.repeat(32)}.pid`);
  fs.writeFileSync(deadClaim, `${await deadPid()}\n`);
  fs.writeFileSync(liveClaim, `${process.pid}\n`);
  fs.mkdirSync(busy, { recursive: true });
  const user = spawn('sleep', ['1000'], { stdio: 'ignore', cwd: busy });
  try {
    fs.mkdirSync(stale, { recursive: true });
    fs.writeFileSync(path.join(stale, 'core-1.img'), 'x');
    await new Promise((r) => setTimeout(r, 100));
    process.kill(stopped.pid!, 'SIGSTOP');
    fs.writeFileSync(path.join(stale, 'restored-stopped.json'), JSON.stringify({ pid: stopped.pid, startTime: startTime(stopped.pid!) }));
    // A copy that runs (it was resumed) is not touched, even if listed.
    fs.writeFileSync(path.join(busy, 'restored-stopped.json'), JSON.stringify({ pid: user.pid, startTime: startTime(user.pid!) }));
    fs.mkdirSync(store);
    fs.writeFileSync(path.join(store, 'pages'), 'x');
    const serve = await startServe(LOCAL_HOST, writeToken(dir), dest);
    try {
      assert.ok(await waitGone(stopped.pid!, 5000), 'the stopped copy was killed');
      assert.ok(isAlive(user.pid!), 'a running process is not touched');
      assert.ok(!fs.existsSync(stale), 'the stale session directory is gone');
      assert.ok(fs.existsSync(busy), 'a directory in use is kept');
      assert.ok(!fs.existsSync(store), 'the dead agent\'s store is gone');
      assert.match(serve.stderr(), /1 stopped copies .*1 session directories, [1-9]\d* page stores/);
      assert.ok(!fs.existsSync(deadClaim), 'a dead agent\'s claim is gone');
      assert.ok(fs.existsSync(liveClaim), 'a live agent\'s claim is kept');
      assert.match(serve.stderr(), /removed [1-9]\d* claims on a --dir/);
      // A second agent on the same --dir is refused while the first lives.
      const second = await runCmd([process.execPath, CLI, 'serve', '--listen', '127.0.0.1:0', '--dir', dest, '--token-file', writeToken(dir)]);
      assert.equal(second.code, 2);
      assert.match(second.stderr, /in use by another phaul-fast serve/);
    } finally {
      await serve.stop();
    }
  } finally {
    stopped.kill('SIGKILL');
    user.kill('SIGKILL');
    fs.rmSync(store, { recursive: true, force: true });
    fs.rmSync(deadClaim, { force: true });
    fs.rmSync(liveClaim, { force: true });
    // The sweep recorded the stopped copy it killed (src/agent/outcomes.ts): that record is ours too.
    try { fs.rmSync(runPath(`outcomes-${dirKey(dest)}`), { recursive: true, force: true }); } catch { /* dest never made */ }
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
