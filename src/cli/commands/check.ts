// `phaul-fast check [--json] [--criu PATH]`: probes CRIU, the kernel and the
// host for real and says which migration modes work here. Exit 0 when at least
// one mode is available, 1 otherwise (with what to install or enable), 3 when
// the native addon does not load (one line on what to run, then what else is
// missing that can be seen without it).
import { checkSystem, formatReport, MODES } from '../../check';
import { LAZY_PIPE_BYTES, pipeMaxSize } from '../../check/kernel';
import { criuBinary } from '../../criu';
import { ExitCode } from '../../errors';
import { addonStatus } from '../../native';
import { formatHelp, parseArgs, type FlagSpec } from '../args';

const spec: Record<string, FlagSpec> = {
  json: { type: 'boolean', help: 'print the report as one JSON object on the last line of stdout' },
  criu: { type: 'string', help: 'CRIU binary to check (default: $PHAUL_FAST_CRIU, then the one setup chose, then PATH)' },
};

export async function run(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(formatHelp('phaul-fast check [--json] [--criu PATH]',
      'Probes CRIU, the kernel and the host for real and reports which migrate modes\n' +
      `(${MODES.join(', ')}) work on this machine and what --mode auto picks. Exit 0\n` +
      'when at least one mode is available, 1 otherwise.', spec));
    return ExitCode.ok;
  }
  const { flags, positionals } = parseArgs(argv, spec);
  if (positionals.length) {
    process.stderr.write(`phaul-fast check: unexpected argument '${positionals[0]}' (see --help)\n`);
    return ExitCode.usage;
  }
  const addon = addonStatus();
  if (!addon.ok) {
    const missing = [addon.problem, ...missingWithoutAddon(typeof flags.criu === 'string' ? flags.criu : undefined)];
    if (flags.json) process.stdout.write(`${JSON.stringify({ addon, missing })}\n`);
    for (const m of missing) process.stderr.write(`phaul-fast check: ${m}\n`);
    return ExitCode.unavailable;
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

/** What check can tell without the addon: CRIU's binary, root, the pipe sysctl. */
function missingWithoutAddon(criu: string | undefined): string[] {
  const out: string[] = [];
  try {
    if (!criu) criuBinary();
  } catch (err) {
    out.push(err instanceof Error ? err.message : String(err));
  }
  if (process.getuid?.() !== 0) out.push('not root: CRIU dumps and restores need root (or CAP_CHECKPOINT_RESTORE and CAP_SYS_ADMIN)');
  const pipe = pipeMaxSize();
  if (pipe === null || pipe < LAZY_PIPE_BYTES) out.push(`fs.pipe-max-size is ${pipe ?? 'unreadable'}: sysctl -w fs.pipe-max-size=${LAZY_PIPE_BYTES} (setup does it)`);
  return out;
}
