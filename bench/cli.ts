// `phaul-fast bench`: the downtime benchmark against CRIU's own migration
// paths (bench/, docs/BENCH.md). Progress goes to stderr; with --json the last
// line of stdout is { machine, rows }.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { formatHelp, intFlag, parseArgs } from '../src/cli/args';
import { PhaulError } from '../src/errors';
import { criuBinary } from '../src/criu/binary';
import { PACKAGE_ROOT } from '../src/package-root';
import { ALL_STRATEGIES, buildMatrix, cellLabel, estimateSeconds, LINKS, STRATEGIES, type LinkName, type StrategyName } from './matrix';
import { abortCleanup, runMatrix, type Row } from './runner';
import { describeMachine } from './machine';
import { BASELINE, CONTAINER_BASELINE, markdown, svgChart } from './report';
import { addPauseRatios } from './stats';

const spec = {
  quick: { type: 'boolean', help: 'the small matrix (under 3 minutes; includes a 1 GiB workload)' },
  switchover: { type: 'boolean', help: 'the switchover matrix: 32 MiB to 1 GiB and memcached, against CRIU\'s own paths (~15 min)' },
  containers: { type: 'boolean', help: 'the container matrix: memwork in a container, phaul-fast\'s modes against runc\'s and podman\'s own paths (~6 min)' },
  json: { type: 'boolean', help: 'print { machine, rows } as JSON on the last line of stdout' },
  out: { type: 'string', help: 'directory for results.json, results.md and pause-vs-memory.svg', default: 'bench/results' },
  runs: { type: 'string', help: 'runs per cell (default: 2 quick, 3 full)' },
  strategies: { type: 'string', help: `comma-separated subset of: ${ALL_STRATEGIES.join(', ')} (the default: ${STRATEGIES.join(', ')})` },
  links: { type: 'string', help: `comma-separated subset of: ${Object.keys(LINKS).join(', ')}` },
  mem: { type: 'string', help: 'only workloads of these sizes, comma-separated MiB (e.g. 1024,4096)' },
  write: { type: 'string', help: 'only workloads writing at these rates, comma-separated MB/s (e.g. 0,20,200)' },
  list: { type: 'boolean', help: 'print the matrix and its expected duration, run nothing' },
  help: { type: 'boolean', help: 'this text' },
} as const;

function numbers(v: string | boolean | undefined, flag: string): number[] | undefined {
  if (typeof v !== 'string') return undefined;
  return v.split(',').map((x) => intFlag(x.trim(), flag, 0, 1 << 20)!);
}

function subset<T extends string>(v: string | boolean | undefined, all: readonly T[], flag: string): T[] | undefined {
  if (typeof v !== 'string') return undefined;
  const xs = v.split(',').map((s) => s.trim()).filter(Boolean);
  for (const x of xs) if (!all.includes(x as T)) throw new PhaulError('usage', `--${flag}: unknown '${x}' (have ${all.join(', ')})`);
  return xs as T[];
}

export async function run(argv: string[]): Promise<number> {
  const { flags, positionals } = parseArgs(argv, spec);
  if (flags.help) {
    process.stdout.write(formatHelp('phaul-fast bench [--quick | --switchover | --containers] [--json] [--out DIR]',
      'Migrates self-verifying workloads (memwork at several sizes and write rates, memcached) with every\n' +
      'phaul-fast mode and with CRIU\'s page server and lazy pages, over loopback and tbf-shaped veth links,\n' +
      'and reports the pause each workload saw. Needs root. The full matrix takes about an hour (--list).', spec));
    return 0;
  }
  if (positionals.length) throw new PhaulError('usage', `unexpected argument '${positionals[0]}'`);
  const quick = !!flags.quick;
  const cells = buildMatrix({
    quick,
    switchover: !!flags.switchover,
    containers: !!flags.containers,
    runs: intFlag(flags.runs, 'runs', 1, 50),
    strategies: subset(flags.strategies, ALL_STRATEGIES, 'strategies') as StrategyName[] | undefined,
    links: subset(flags.links, Object.keys(LINKS) as LinkName[], 'links'),
    memMiB: numbers(flags.mem, 'mem'),
    writeMBps: numbers(flags.write, 'write'),
  });
  if (cells.length === 0) throw new PhaulError('usage', 'no cell of the matrix matches those filters (see --list)');
  const est = estimateSeconds(cells);
  if (flags.list) {
    for (const c of cells) process.stdout.write(`${cellLabel(c)} x${c.runs}\n`);
    process.stdout.write(`${cells.length} cells, about ${Math.ceil(est / 60)} min if every strategy is available\n`);
    return 0;
  }
  if (process.getuid?.() !== 0) throw new PhaulError('unavailable', 'bench needs root (CRIU, network namespaces)');
  const criu = criuBinary();
  const outDir = path.resolve(PACKAGE_ROOT, flags.out as string);
  const progress = (m: string) => process.stderr.write(`bench: ${m}\n`);
  progress(`${cells.length} cells, about ${Math.ceil(est / 60)} min if every strategy is available; results in ${outDir}`);

  const machine = await describeMachine(criu);
  const t0 = Date.now();
  // Interrupted: remove what the current run has live, then leave.
  const onSignal = (sig: NodeJS.Signals) => {
    progress(`${sig}: cleaning up`);
    void abortCleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  let rows: Row[];
  try {
    rows = addPauseRatios(addPauseRatios(await runMatrix(cells, { criu, scratch: '/dev/shm', progress }), BASELINE), CONTAINER_BASELINE);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  const seconds = (Date.now() - t0) / 1000;
  const command = ['phaul-fast bench', ...argv].join(' ');

  fs.mkdirSync(outDir, { recursive: true });
  const result = { machine, command, seconds: Math.round(seconds), rows };
  fs.writeFileSync(path.join(outDir, 'results.json'), JSON.stringify(result, null, 2) + '\n');
  const md = markdown(rows, machine, command, seconds);
  fs.writeFileSync(path.join(outDir, 'results.md'), md);
  fs.writeFileSync(path.join(outDir, 'pause-vs-memory.svg'), svgChart(rows, machine));
  progress(`done in ${Math.round(seconds)} s; wrote results.json, results.md, pause-vs-memory.svg to ${outDir}`);

  if (flags.json) process.stdout.write(JSON.stringify({ machine, rows }) + '\n');
  else process.stdout.write(md);
  const failed = rows.filter((r) => r.status === 'failed').length;
  return failed ? 1 : 0;
}
