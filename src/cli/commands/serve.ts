// `phaul-fast serve`: the destination agent, in the foreground, logging to stderr.
import * as fs from 'node:fs';
import { formatHelp, intFlag, parseArgs } from '../args';
import { PhaulError } from '../../errors';
import { readToken } from '../../protocol/auth';
import { DestinationAgent } from '../../agent/destination';
import { DEFAULT_LIMITS } from '../../agent/admission';
import type { ServerTls } from '../../protocol/secure-channel';
import { parseHostPort } from '../hostport';

const spec = {
  listen: { type: 'string', help: 'address and port to listen on, e.g. 0.0.0.0:7400 or [::1]:7400' },
  dir: { type: 'string', help: 'directory for the images of migrations in progress' },
  'token-file': { type: 'string', help: 'file holding the shared secret, mode 0600, at least 32 characters (phaul-fast token)' },
  encrypt: { type: 'boolean', help: 'TLS keyed by the token (no certificate or CA): for untrusted networks' },
  'tls-cert': { type: 'string', help: 'serve TLS with this PEM certificate (for untrusted networks)' },
  'tls-key': { type: 'string', help: 'the PEM private key of --tls-cert' },
  'runtime-root': { type: 'string', help: 'containers: runc\'s state directory here (default runc\'s own)' },
  bundles: { type: 'string', help: 'containers: where moved bundles go, one directory per container (default: the source\'s bundle path; podman: where its archive is staged, default under the temporary directory)' },
  'podman-root': { type: 'string', help: 'podman containers: podman\'s state directory here (as migrate --runtime-root; default podman\'s own)' },
  'cgroup-parent': { type: 'string', help: 'containers: cgroup parent of moved containers (cgroupsPath PARENT/ID; default the source\'s cgroupsPath); ' +
    'a runc container with a named network namespace gets /run/netns/phaul-ID here, plugged in as it was at the source' },
  'max-sessions': { type: 'string', help: 'migrations received at once; more are refused (exit 11 at the source)', default: String(DEFAULT_LIMITS.maxSessions) },
  'max-store-bytes': { type: 'string', help: 'pages held at once by all sessions (stores and images), BYTES; sessions that would pass it are refused' },
  'keep-free-memory': { type: 'string', help: 'refuse a session that would leave less memory available, BYTES', default: String(DEFAULT_LIMITS.keepFreeMemory) },
  'keep-images': { type: 'boolean', help: 'keep each migration\'s images after it ends (debugging)' },
  'store-dir': { type: 'string', help: 'where pre-copy and hybrid page stores go (default: /dev/shm when it has room, else the temp dir)' },
  json: { type: 'boolean', help: 'print one JSON line per event on stdout: listening, migrated, filled (hybrid)' },
  help: { type: 'boolean', help: 'this text' },
} as const;

export async function run(argv: string[]): Promise<number> {
  const { flags } = parseArgs(argv, spec);
  if (flags.help) {
    process.stdout.write(formatHelp('phaul-fast serve --listen ADDR:PORT --dir DIR --token-file FILE [options]',
      'Runs the destination agent: it receives migrations from `phaul-fast migrate`, restores them with CRIU\n' +
      'and resumes each only when its source commits. Runs until interrupted; logs go to stderr.', spec));
    return 0;
  }
  for (const k of ['listen', 'dir', 'token-file'] as const)
    if (typeof flags[k] !== 'string') throw new PhaulError('usage', `--${k} is required (see --help)`);
  const { host, port } = parseHostPort(flags.listen as string, '--listen');
  const token = readToken(flags['token-file'] as string);
  let tlsOpts: ServerTls | undefined;
  if (flags.encrypt && (flags['tls-cert'] || flags['tls-key'])) throw new PhaulError('usage', '--encrypt and --tls-cert are alternatives: pick one');
  if (flags.encrypt) tlsOpts = { psk: true };
  if (flags['tls-cert'] || flags['tls-key']) {
    if (!flags['tls-cert'] || !flags['tls-key']) throw new PhaulError('usage', '--tls-cert and --tls-key go together');
    const read = (f: string) => { try { return fs.readFileSync(f); } catch { throw new PhaulError('usage', `cannot read ${f}`); } };
    tlsOpts = { cert: read(flags['tls-cert'] as string), key: read(flags['tls-key'] as string) };
  }
  const storeDir = flags['store-dir'] as string | undefined;
  if (storeDir !== undefined && !fs.statSync(storeDir, { throwIfNoEntry: false })?.isDirectory()) {
    throw new PhaulError('usage', `--store-dir ${storeDir} is not a directory`);
  }
  const limits = {
    maxSessions: intFlag(flags['max-sessions'], 'max-sessions', 1, 1000)!,
    maxStoreBytes: intFlag(flags['max-store-bytes'], 'max-store-bytes', 1) ?? Infinity,
    keepFreeMemory: intFlag(flags['keep-free-memory'], 'keep-free-memory', 0)!,
  };
  const agent = new DestinationAgent({ host, port, dir: flags.dir as string, token, tls: tlsOpts, keepImages: !!flags['keep-images'], limits,
    storeDir, containers: { runtimeRoot: flags['runtime-root'] as string | undefined, bundles: flags.bundles as string | undefined,
      cgroupParent: flags['cgroup-parent'] as string | undefined, podmanRoot: flags['podman-root'] as string | undefined } });
  const json = !!flags.json;
  agent.on('log', (line: string) => process.stderr.write(`phaul-fast serve: ${line}\n`));
  agent.on('migrated', (e) => { if (json) process.stdout.write(JSON.stringify({ event: 'migrated', ...e }) + '\n'); });
  // Hybrid: the workload's memory is complete (ok) or could not be (the tree is stopped; see the log).
  agent.on('filled', (e) => { if (json) process.stdout.write(JSON.stringify({ event: 'filled', ...e }) + '\n'); });
  // Last line of defence: one bad migration must never take the agent down.
  process.on('unhandledRejection', (e) => process.stderr.write(`phaul-fast serve: internal error: ${(e as Error)?.message ?? e}\n`));
  const addr = await agent.listen();
  const how = !tlsOpts ? ' (plain TCP: every control frame is authenticated, page data is not and nothing is secret; --encrypt for untrusted networks)'
    : 'psk' in tlsOpts ? ' (TLS keyed by the token)' : ' (TLS)';
  process.stderr.write(`phaul-fast serve: listening on ${addr.host}:${addr.port}${how}\n`);
  if (json) process.stdout.write(JSON.stringify({ event: 'listening', ...addr }) + '\n');
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  await agent.close();
  return 0;
}
