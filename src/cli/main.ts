// The phaul-fast command line: one module per subcommand under commands/.
// Every error ends as one line on stderr and a distinct exit code (src/errors.ts).
// A command's module is loaded only when that command runs, so `--help` and
// `check` work without the addon and the bench harness (bench/, not part of the
// package) is loaded only for `bench`.
import { asPhaulError, ExitCode } from '../errors';
import { VERSION } from '../version';

type CommandModule = { run(argv: string[]): Promise<number> };
type Command = { about: string; load(): CommandModule };

const commands: Record<string, Command> = {
  check: { about: 'probe this machine: CRIU, kernel features, which migration modes work', load: () => require('./commands/check') as CommandModule },
  setup: { about: 'as root: install what is missing (Debian packages, CRIU, sysctls) and build the addon', load: () => require('./commands/setup') as CommandModule },
  serve: { about: 'run the destination agent that receives migrations', load: () => require('./commands/serve') as CommandModule },
  migrate: { about: 'move a process tree to a destination agent', load: () => require('./commands/migrate') as CommandModule },
  resolve: { about: 'end a migration left in doubt with exactly one running copy (asks the destination)', load: () => require('./commands/resolve') as CommandModule },
  token: { about: 'write a new random token file (mode 0600) for serve and migrate', load: () => require('./commands/token') as CommandModule },
  bench: { about: 'measure downtime against CRIU\'s own migration paths (source checkout only)', load: () => require('./commands/bench') as CommandModule },
};

function usage(): string {
  const rows = Object.entries(commands).map(([n, c]) => `  ${n.padEnd(10)} ${c.about}`).join('\n');
  return `phaul-fast ${VERSION}: live migration of Linux processes on CRIU

usage: phaul-fast <command> [options]      (phaul-fast <command> --help for its options)

commands:
${rows}

  --version  print the version
`;
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === undefined || cmd === '--help' || cmd === '-h' || cmd === 'help') {
    process.stdout.write(usage());
    return cmd === undefined ? ExitCode.usage : ExitCode.ok;
  }
  if (cmd === '--version' || cmd === '-V') {
    process.stdout.write(`${VERSION}\n`);
    return ExitCode.ok;
  }
  const c = commands[cmd];
  if (!c) {
    process.stderr.write(`phaul-fast: unknown command '${cmd}' (try phaul-fast --help)\n`);
    return ExitCode.usage;
  }
  try {
    return await c.load().run(rest);
  } catch (err) {
    const e = asPhaulError(err);
    process.stderr.write(`phaul-fast ${cmd}: ${e.message}\n`);
    if (process.env.PHAUL_FAST_DEBUG) process.stderr.write(`${(err as Error)?.stack ?? ''}\n`);
    return e.exitCode;
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then((code) => { process.exitCode = code; });
}
