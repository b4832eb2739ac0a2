// `phaul-fast check [--json] [--criu PATH]`: probes CRIU, the kernel and the
// host for real and says which migration modes work here. Exit 0 when at least
// one mode is available, 1 otherwise (with what to install or enable).
import { checkSystem, formatReport } from '../../check';
import { ExitCode } from '../../errors';
import { formatHelp, parseArgs, type FlagSpec } from '../args';

const spec: Record<string, FlagSpec> = {
  json: { type: 'boolean', help: 'print the report as one JSON object on the last line of stdout' },
  criu: { type: 'string', help: 'CRIU binary to check (default: $PHAUL_FAST_CRIU, then the one setup chose, then PATH)' },
};

export async function run(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(formatHelp('phaul-fast check [--json] [--criu PATH]',
      'Probes CRIU, the kernel and the host for real and reports which migration modes\n' +
      '(stop-copy, precopy, postcopy, hybrid) work on this machine. Exit 0 when at\n' +
      'least one mode is available, 1 otherwise.', spec));
    return ExitCode.ok;
  }
  const { flags, positionals } = parseArgs(argv, spec);
  if (positionals.length) {
    process.stderr.write(`phaul-fast check: unexpected argument '${positionals[0]}' (see --help)\n`);
    return ExitCode.usage;
  }
  const report = await checkSystem({ criuBinary: typeof flags.criu === 'string' ? flags.criu : undefined });
  const anyMode = Object.values(report.modes).some(Boolean);
  if (flags.json) {
    process.stdout.write(`${JSON.stringify(report)}\n`);
    if (!anyMode) for (const a of report.missing) process.stderr.write(`phaul-fast check: ${a.item}: ${a.fix}\n`);
  } else {
    process.stdout.write(formatReport(report));
  }
  return anyMode ? ExitCode.ok : ExitCode.failed;
}
