// `phaul-fast resolve SESSION`: ends a session left in doubt (src/agent/resolve.ts).
import { formatHelp, parseArgs } from '../args';
import { asPhaulError, PhaulError } from '../../errors';
import { readToken } from '../../protocol/auth';
import { resolveSession } from '../../agent/resolve';
import { orphanedRecords, pruneSettledRecords } from '../../agent/source-record';
import { parseHostPort } from '../hostport';
import { CLIENT_TLS_FLAGS, clientTls } from '../client-tls';

const spec = {
  'token-file': { type: 'string', help: 'file holding the shared secret (as for migrate)' },
  to: { type: 'string', help: 'the destination agent, HOST:PORT (default: the one this host\'s record of the session names)' },
  ...CLIENT_TLS_FLAGS,
  list: { type: 'boolean', help: 'list the sessions on this host that a dead migrate left to resolve' },
  json: { type: 'boolean', help: 'print the outcome as one JSON object on the last line of stdout' },
  help: { type: 'boolean', help: 'this text' },
} as const;

export async function run(argv: string[]): Promise<number> {
  const { flags, positionals } = parseArgs(argv, spec);
  const json = !!flags.json;
  if (flags.help) {
    process.stdout.write(formatHelp('phaul-fast resolve SESSION --token-file FILE [--to HOST:PORT] [--json]   |   phaul-fast resolve --list',
      'Ends a migration left in doubt with exactly one running copy of the workload. Run it on the source host:\n' +
      'it reads what migrate recorded there (the destination, the original processes), asks the destination\n' +
      'what became of its copy, and acts on the answer: the copy runs -> the original is killed; the copy waits\n' +
      'stopped -> it is committed (or aborted, if the original runs again); no copy runs there -> the original\n' +
      'is resumed; the copy ran but its memory never all arrived (postcopy) -> it is killed and the original\n' +
      'resumed, losing what the copy did since the switchover. CRIU\'s network lock is lifted before a resume;\n' +
      'a container killed here is forgotten by its runtime too. If the destination cannot be asked, nothing\n' +
      'changes. migrate prints the session id; --list shows the sessions whose migrate died.\n' +
      'Exit codes: 0 resolved (see outcome), 2 usage, 4 auth, 6 destination unreachable (nothing changed),\n' +
      '10 cannot be resolved from here (the message says why and what to do).', spec));
    return 0;
  }
  if (flags.list) {
    pruneSettledRecords();
    const recs = orphanedRecords();
    if (json) process.stdout.write(JSON.stringify({ ok: true, sessions: recs }) + '\n');
    else for (const r of recs)
      process.stdout.write(`${r.session}  ${new Date(r.at).toISOString()}  pid ${r.root}  state ${r.state}  -> ${r.to.host}:${r.to.port}\n`);
    return 0;
  }
  try {
    const session = positionals[0];
    if (positionals.length !== 1 || !session) throw new PhaulError('usage', 'give one SESSION (see --help)');
    if (typeof flags['token-file'] !== 'string') throw new PhaulError('usage', '--token-file is required (see --help)');
    const token = readToken(flags['token-file']);
    // Default: --encrypt when the session used it (its record says so).
    const tls = clientTls(flags);
    const to = typeof flags.to === 'string' ? parseHostPort(flags.to, '--to') : undefined;
    const r = await resolveSession({ session, token, to, tls });
    if (json) process.stdout.write(JSON.stringify(r) + '\n');
    else process.stdout.write(`session ${session}: ${r.outcome}: ${r.detail}\n`);
    return 0;
  } catch (err) {
    const e = asPhaulError(err);
    process.stderr.write(`phaul-fast resolve: ${e.message}\n`);
    if (json) process.stdout.write(JSON.stringify({ ok: false, error: { code: e.code, message: e.message } }) + '\n');
    return e.exitCode;
  }
}
