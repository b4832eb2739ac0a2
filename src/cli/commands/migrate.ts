// `phaul-fast migrate`: moves a process tree to a destination agent.
import { formatHelp, intFlag, parseArgs } from '../args';
import { asPhaulError, PhaulError } from '../../errors';
import { readToken } from '../../protocol/auth';
import { DEFAULT_FREEZE_TIMEOUT_MS, Migration, MigrationError, PhaseEvent } from '../../agent/migrate';
import { AUTO_ORDER, isMode, MODES } from '../../agent/capabilities';
import { parseHostPort } from '../hostport';
import { CLIENT_TLS_FLAGS, clientTls } from '../client-tls';
import { RUNTIMES, type Runtime } from '../../container/runtimes';
import { ProgressDisplay } from '../progress';
import type { RoundEvent } from '../../agent/precopy';

const spec = {
  pid: { type: 'string', help: 'root of the process tree to move (may be the init of its own pid namespace)' },
  container: { type: 'string', help: 'or: the id of a running container to move (its init and descendants, bundle and ownership; ' +
    'runc: a network namespace named in its config.json moves with its veth, addresses and TCP connections, and the source routes its addresses on to the destination)' },
  runtime: { type: 'string', help: 'container runtime: runc, or podman (containers it runs with runc; not hybrid)', default: 'runc' },
  'runtime-root': { type: 'string', help: 'the runtime\'s state directory (runc --root; podman: DIR/root, DIR/tmp and a run root named after DIR; default the runtime\'s own)' },
  'shared-fs': { type: 'boolean', help: 'container: the destination sees its rootfs at the same path; do not copy it' },
  'shared-path': { type: 'string', help: 'container: host directories (comma-separated) both hosts share; volumes under them are not copied' },
  to: { type: 'string', help: 'destination agent, HOST:PORT' },
  'token-file': { type: 'string', help: 'file holding the shared secret' },
  mode: { type: 'string', help: `how to move memory: auto, ${MODES.join(', ')} (auto: the first of ${AUTO_ORDER.join(', ')} both hosts offer)`, default: 'auto' },
  ...CLIENT_TLS_FLAGS,
  'tcp-established': { type: 'boolean', help: 'move established TCP connections (nftables network lock; on for a container with a named network namespace)' },
  'tcp-close': { type: 'boolean', help: 'established TCP connections are not moved: the restored tree finds them closed, their peers see them end and reconnect (a server whose clients come back)' },
  'ext-unix-sk': { type: 'boolean', help: 'allow unix sockets connected to peers outside the tree' },
  'shell-job': { type: 'boolean', help: 'the tree is a shell job (its session leader is outside it)' },
  'file-locks': { type: 'boolean', help: 'move file locks' },
  'work-dir': { type: 'string', help: 'where the source keeps CRIU\'s non-memory images (default: temp dir)' },
  'downtime-limit': { type: 'string', help: 'precopy, hybrid: switch over when the expected pause fits in MS', default: '300' },
  'max-rounds': { type: 'string', help: 'precopy, hybrid: switch over after N rounds at the latest', default: '30' },
  'max-bandwidth': { type: 'string', help: 'precopy, hybrid: cap on the page stream, BYTES_PER_S' },
  streams: { type: 'string', help: 'precopy, hybrid: parallel data connections', default: '2' },
  compress: { type: 'string', help: 'precopy, hybrid: lz4 per batch: auto (when the link is slower than lz4), lz4, none', default: 'auto' },
  'auto-converge': { type: 'boolean', help: 'precopy, hybrid: throttle the workload\'s CPU in steps when it dirties memory faster than the link' },
  'freeze-timeout': { type: 'string', help: 'longest the workload may stay frozen before the migration rolls back, S', default: String(DEFAULT_FREEZE_TIMEOUT_MS / 1000) },
  json: { type: 'boolean', help: 'print the report as one JSON object on the last line of stdout' },
  help: { type: 'boolean', help: 'this text' },
} as const;

export async function run(argv: string[]): Promise<number> {
  const { flags } = parseArgs(argv, spec);
  if (flags.help) {
    process.stdout.write(formatHelp('phaul-fast migrate (--pid PID | --container ID) --to HOST:PORT --token-file FILE [options]',
      'Moves the process tree rooted at PID to the agent at HOST:PORT (`phaul-fast serve`). The original stays\n' +
      'frozen until the destination runs the workload, and is resumed if anything fails before that.\n' +
      'Modes: stop-copy (freeze, copy everything, restore); precopy (copy while it runs, then only the last\n' +
      'dirty pages while frozen); hybrid (precopy, then the destination resumes it before its memory is back\n' +
      'in place and fills it from its own copy: the pause no longer grows with memory).\n' +
      'Exit codes: 0 moved, 1 failed and rolled back, 2 usage, 3 unavailable, 4 auth, 5 incompatible, 6 network,\n' +
      '7 protocol, 8 CRIU, 9 no such process, 10 outcome in doubt (the original is left stopped: run\n' +
      'phaul-fast resolve SESSION as the message says), 11 destination busy (nothing touched).', spec));
    return 0;
  }
  const json = !!flags.json;
  try {
    for (const k of ['to', 'token-file'] as const)
      if (typeof flags[k] !== 'string') throw new PhaulError('usage', `--${k} is required (see --help)`);
    if ((typeof flags.pid === 'string') === (typeof flags.container === 'string')) throw new PhaulError('usage', 'give either --pid or --container (see --help)');
    const pid = intFlag(flags.pid, 'pid', 1, 1 << 22);
    const runtime = flags.runtime as string;
    if (!(RUNTIMES as readonly string[]).includes(runtime)) throw new PhaulError('usage', `--runtime must be one of ${RUNTIMES.join(', ')}, got '${runtime}'`);
    const container = typeof flags.container === 'string' ? {
      id: flags.container, runtime: runtime as Runtime, runtimeRoot: flags['runtime-root'] as string | undefined,
      sharedFs: !!flags['shared-fs'],
      sharedPaths: typeof flags['shared-path'] === 'string' ? flags['shared-path'].split(',').filter(Boolean) : [],
    } : undefined;
    const to = parseHostPort(flags.to as string, '--to');
    const mode = flags.mode as string;
    if (mode !== 'auto' && !isMode(mode)) throw new PhaulError('usage', `--mode must be auto or one of ${MODES.join(', ')}, got '${mode}'`);
    const token = readToken(flags['token-file'] as string);
    const tls = clientTls(flags);
    const compress = flags.compress as string;
    if (!['auto', 'lz4', 'none'].includes(compress)) throw new PhaulError('usage', `--compress must be auto, lz4 or none, got '${compress}'`);
    const precopy = {
      downtimeLimitMs: intFlag(flags['downtime-limit'], 'downtime-limit', 1, 3_600_000),
      maxRounds: intFlag(flags['max-rounds'], 'max-rounds', 1, 10_000),
      maxBandwidthBps: intFlag(flags['max-bandwidth'], 'max-bandwidth', 1024),
      streams: intFlag(flags.streams, 'streams', 1, 16),
      compress: compress as 'auto' | 'lz4' | 'none',
      autoConverge: !!flags['auto-converge'],
    };
    const m = new Migration({
      pid, container, to, token, tokenFile: flags['token-file'] as string, mode, tls, precopy,
      tcpEstablished: !!flags['tcp-established'], tcpClose: !!flags['tcp-close'], extUnixSk: !!flags['ext-unix-sk'],
      shellJob: !!flags['shell-job'], fileLocks: !!flags['file-locks'],
      workDir: flags['work-dir'] as string | undefined,
      freezeTimeoutMs: intFlag(flags['freeze-timeout'], 'freeze-timeout', 1, 3600)! * 1000,
    });
    const tty = process.stderr.isTTY && !json;
    const progress = new ProgressDisplay(process.stderr);
    // Ctrl-C or a kill: roll back (CRIU resumes the original, the throttle is
    // released) and exit with the report; a second signal does not cut that short.
    const onSignal = (sig: NodeJS.Signals) => {
      progress.note(`phaul-fast migrate: ${sig}: rolling back`);
      m.abort(new PhaulError('failed', `interrupted by ${sig}`));
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    m.on('phase', (e: PhaseEvent) => {
      if (!tty) process.stderr.write(`phaul-fast migrate: ${e.phase} ${e.ms} ms\n`);
    });
    m.on('round', (e: RoundEvent) => progress.round(e));
    m.on('log', (line: string) => progress.note(`phaul-fast migrate: ${line}`));
    const report = await m.run().finally(() => progress.end());
    if (json) process.stdout.write(JSON.stringify(report) + '\n');
    else process.stdout.write(`migrated ${container ? `container ${container.id}` : `pid ${pid}`} -> ${to.host}:${to.port} as pid ${report.restoredPid}: ` +
      `downtime ${report.downtimeMs} ms, total ${report.totalMs} ms, ${(report.bytesSent / 1048576).toFixed(1)} MiB sent` +
      `${report.filledMs !== undefined ? `, memory filled ${report.filledMs} ms after the freeze` : ''}\n`);
    if (report.warning) process.stderr.write(`phaul-fast migrate: warning: ${report.warning}\n`);
    return 0;
  } catch (err) {
    const e = err instanceof MigrationError ? err : new MigrationError(asPhaulError(err), false);
    process.stderr.write(`phaul-fast migrate: ${e.message}${e.rolledBack ? ' (the original keeps running at the source)' : ''}\n`);
    if (json) process.stdout.write(JSON.stringify(e.report()) + '\n');
    return e.exitCode;
  }
}
