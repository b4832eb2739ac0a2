// `phaul-fast migrate`: moves a process tree to a destination agent.
import * as fs from 'node:fs';
import { formatHelp, intFlag, parseArgs } from '../args';
import { asPhaulError, PhaulError } from '../../errors';
import { readToken } from '../../protocol/auth';
import { Migration, MigrationError, MODES, Mode, PhaseEvent } from '../../agent/migrate';
import { parseHostPort } from '../hostport';

const spec = {
  pid: { type: 'string', help: 'root of the process tree to move (may be the init of its own pid namespace)' },
  to: { type: 'string', help: 'destination agent, HOST:PORT' },
  'token-file': { type: 'string', help: 'file holding the shared secret' },
  mode: { type: 'string', help: `how to move memory: ${MODES.join(', ')}`, default: 'stop-copy' },
  tls: { type: 'boolean', help: 'connect with TLS' },
  'tls-ca': { type: 'string', help: 'PEM CA (or self-signed certificate) that the destination\'s certificate must chain to' },
  'tls-servername': { type: 'string', help: 'name to check the destination\'s certificate against' },
  'tcp-established': { type: 'boolean', help: 'move established TCP connections (nftables network lock)' },
  'ext-unix-sk': { type: 'boolean', help: 'allow unix sockets connected to peers outside the tree' },
  'shell-job': { type: 'boolean', help: 'the tree is a shell job (its session leader is outside it)' },
  'file-locks': { type: 'boolean', help: 'move file locks' },
  'work-dir': { type: 'string', help: 'where the source keeps CRIU\'s non-memory images (default: temp dir)' },
  json: { type: 'boolean', help: 'print the report as one JSON object on the last line of stdout' },
  help: { type: 'boolean', help: 'this text' },
} as const;

export async function run(argv: string[]): Promise<number> {
  const { flags } = parseArgs(argv, spec);
  if (flags.help) {
    process.stdout.write(formatHelp('phaul-fast migrate --pid PID --to HOST:PORT --token-file FILE [options]',
      'Moves the process tree rooted at PID to the agent at HOST:PORT (`phaul-fast serve`). The original stays\n' +
      'frozen until the destination runs the workload, and is resumed if anything fails before that.\n' +
      'Exit codes: 0 moved, 1 failed and rolled back, 2 usage, 4 auth, 5 incompatible, 6 network,\n' +
      '7 protocol, 8 CRIU, 9 no such process, 10 outcome in doubt (see the message).', spec));
    return 0;
  }
  const json = !!flags.json;
  try {
    for (const k of ['pid', 'to', 'token-file'] as const)
      if (typeof flags[k] !== 'string') throw new PhaulError('usage', `--${k} is required (see --help)`);
    const pid = intFlag(flags.pid, 'pid', 1, 1 << 22)!;
    const to = parseHostPort(flags.to as string, '--to');
    const mode = flags.mode as string;
    if (!(MODES as readonly string[]).includes(mode)) throw new PhaulError('usage', `--mode must be one of ${MODES.join(', ')}, got '${mode}'`);
    const token = readToken(flags['token-file'] as string);
    let tls;
    if (flags.tls || flags['tls-ca']) {
      let ca: Buffer | undefined;
      if (flags['tls-ca']) {
        try { ca = fs.readFileSync(flags['tls-ca'] as string); } catch { throw new PhaulError('usage', `cannot read ${flags['tls-ca']}`); }
      }
      tls = { ca, servername: flags['tls-servername'] as string | undefined };
    }
    const m = new Migration({
      pid, to, token, mode: mode as Mode, tls,
      tcpEstablished: !!flags['tcp-established'], extUnixSk: !!flags['ext-unix-sk'],
      shellJob: !!flags['shell-job'], fileLocks: !!flags['file-locks'],
      workDir: flags['work-dir'] as string | undefined,
    });
    const tty = process.stderr.isTTY && !json;
    m.on('phase', (e: PhaseEvent) => {
      if (tty || !json) process.stderr.write(`phaul-fast migrate: ${e.phase} ${e.ms} ms\n`);
    });
    const report = await m.run();
    if (json) process.stdout.write(JSON.stringify(report) + '\n');
    else process.stdout.write(`migrated pid ${pid} -> ${to.host}:${to.port} as pid ${report.restoredPid}: ` +
      `downtime ${report.downtimeMs} ms, total ${report.totalMs} ms, ${(report.bytesSent / 1048576).toFixed(1)} MiB sent\n`);
    return 0;
  } catch (err) {
    const e = err instanceof MigrationError ? err : new MigrationError(asPhaulError(err), true);
    process.stderr.write(`phaul-fast migrate: ${e.message}${e.rolledBack ? ' (the original keeps running at the source)' : ''}\n`);
    if (json) process.stdout.write(JSON.stringify(e.report()) + '\n');
    return e.exitCode;
  }
}
