// The benchmark matrix: workloads x strategies x links, and a rough duration
// model so the full run can say up front how long it will take.
import { MODES, type Mode } from '../src/agent/capabilities';

/** Every migrate mode of the capability model, then CRIU's own paths and the container runtimes' own paths to compare with. */
export type StrategyName = `phaul-fast:${Mode}` | `phaul-fast:${Mode}+encrypt` | 'criu:page-server' | 'criu:lazy' | 'criu:local'
  | 'runc:page-server' | 'podman:export';
export const STRATEGIES: readonly StrategyName[] = [
  ...MODES.map((m) => `phaul-fast:${m}` as const),
  'criu:page-server',
  'criu:lazy',
  'criu:local',
];
/** Measured only when asked for (bench --strategies): what --encrypt (TLS-PSK on every connection) costs. */
export const OPTIONAL_STRATEGIES: readonly StrategyName[] = MODES.map((m) => `phaul-fast:${m}+encrypt` as const);
/** A container runtime's own migration path: only for container workloads (bench --containers). */
export const CONTAINER_ONLY: readonly StrategyName[] = ['runc:page-server', 'podman:export'];
/** What --containers runs on each container workload: phaul-fast's modes on the container and the runtimes' own paths. */
export const CONTAINER_STRATEGIES: readonly StrategyName[] = [...MODES.map((m) => `phaul-fast:${m}` as const), ...CONTAINER_ONLY];
export const ALL_STRATEGIES: readonly StrategyName[] = [...STRATEGIES, ...OPTIONAL_STRATEGIES, ...CONTAINER_ONLY];

/** The strategies that can move `kind`: CRIU's own paths move a process tree, the runtimes' paths a container. */
export function appliesTo(strategy: StrategyName, kind: WorkloadSpec['kind']): boolean {
  if (kind === 'container') return strategy.startsWith('phaul-fast:') || CONTAINER_ONLY.includes(strategy);
  return !CONTAINER_ONLY.includes(strategy);
}

/** Link name -> tbf rate in Mbit/s (null: loopback, unshaped). */
export const LINKS = { loopback: null, '10gbit': 10_000, '1gbit': 1_000 } as const;
export type LinkName = keyof typeof LINKS;

export interface WorkloadSpec {
  /** container: memwork as the init of a runc container (a podman one for podman:*), as test/migrate-container.test.ts builds it. */
  kind: 'memwork' | 'memcached' | 'redis' | 'pythreads' | 'container';
  /** memwork, pythreads, container: buffer size; memcached: data loaded; redis: 8192 keys per MiB (2^20 keys in 128). */
  memMiB: number;
  /** memwork, pythreads: rewrite rate; memcached, redis: the client's set rate. MB = 10^6 bytes. */
  writeMBps: number;
}

export interface Cell {
  strategy: StrategyName;
  workload: WorkloadSpec;
  link: LinkName;
  runs: number;
}

export interface MatrixOptions {
  quick?: boolean;
  /** The switchover matrix (issue 12): small and real workloads, default mode against CRIU's own paths. */
  switchover?: boolean;
  /** The container matrix (issue 10): memwork in a container, phaul-fast's modes against runc's and podman's own paths. */
  containers?: boolean;
  runs?: number;
  strategies?: StrategyName[];
  links?: LinkName[];
  /** Keep only workloads of these sizes / write rates. */
  memMiB?: number[];
  writeMBps?: number[];
}

const mw = (memMiB: number, writeMBps: number): WorkloadSpec => ({ kind: 'memwork', memMiB, writeMBps });
const mc = (memMiB: number, writeMBps: number): WorkloadSpec => ({ kind: 'memcached', memMiB, writeMBps });
const redis = (memMiB: number, writeMBps: number): WorkloadSpec => ({ kind: 'redis', memMiB, writeMBps });
const py = (memMiB: number, writeMBps: number): WorkloadSpec => ({ kind: 'pythreads', memMiB, writeMBps });
const ctr = (memMiB: number, writeMBps: number): WorkloadSpec => ({ kind: 'container', memMiB, writeMBps });

// --quick must finish in under 3 minutes on the 2-core reference machine with
// every strategy available, and still include a size of 1 GiB or more.
const QUICK: Array<{ link: LinkName; workloads: WorkloadSpec[]; runs: number }> = [
  { link: 'loopback', workloads: [mw(256, 50), mw(1024, 50)], runs: 2 },
  { link: '10gbit', workloads: [mc(256, 20)], runs: 2 },
  { link: '1gbit', workloads: [mw(128, 50)], runs: 2 },
];

// The full matrix: pause against memory size on every link, a write-rate
// sweep at 1 GiB, and memcached. See docs/BENCH.md for its duration.
// memcached never runs on loopback: there both "hosts" are one namespace, and
// a strategy that restores while the frozen source still exists (CRIU lazy,
// phaul-fast's commit-after-restore) cannot bind the listening port twice.
const FULL: Array<{ link: LinkName; workloads: WorkloadSpec[]; runs: number }> = (['loopback', '10gbit', '1gbit'] as LinkName[]).map((link) => ({
  link,
  // Sizes at 20 MB/s, and the 1 and 4 GiB workloads idle and writing 200 MB/s.
  workloads: [mw(64, 20), mw(256, 20), mw(1024, 20), mw(4096, 20), mw(1024, 0), mw(1024, 200), mw(4096, 0), mw(4096, 200),
    ...(link === 'loopback' ? [] : [mc(512, 20)])],
  runs: 3,
}));

// --switchover: the pause's fixed cost (a small workload, where it is all of
// the pause), pre-copy's data path (1 GiB idle: the first round is all of
// memory) and the hybrid pause at 256 MiB and 1 GiB, against CRIU's own dump
// and restore (criu:local), page server and lazy pages, plus small real
// applications: a 4-thread CPython process, and memcached and redis (2^20
// keys) with their data sets over a 10 Gbit/s link (see docs/BENCH.md).
const SWITCHOVER: Array<{ link: LinkName; workloads: WorkloadSpec[]; runs: number }> = [
  { link: 'loopback', workloads: [mw(32, 5), mw(256, 20), mw(1024, 0), mw(1024, 20), py(256, 5)], runs: 3 },
  { link: '10gbit', workloads: [mc(256, 20), redis(128, 5)], runs: 3 },
];

// --containers: the container workload at the sizes (256 MiB and 1 GiB
// rewriting 20 MB/s), on loopback (a container brings its own network namespace).
// The same memwork as a plain process tree, in the default mode only: what
// the container's pause should come close to.
const CONTAINERS: Array<{ link: LinkName; workloads: WorkloadSpec[]; runs: number; only?: StrategyName[] }> = [
  { link: 'loopback', workloads: [ctr(256, 20), ctr(1024, 20)], runs: 2 },
  { link: 'loopback', workloads: [mw(256, 20), mw(1024, 20)], runs: 2, only: ['phaul-fast:hybrid'] },
];

/** Strategies only the switchover matrix runs unless asked for (--strategies): the others' matrices keep their length. */
export const SWITCHOVER_ONLY: readonly StrategyName[] = ['criu:local'];

export function buildMatrix(o: MatrixOptions = {}): Cell[] {
  const cells: Cell[] = [];
  const strategies = o.strategies ?? (o.containers ? CONTAINER_STRATEGIES : STRATEGIES.filter((s) => o.switchover || !SWITCHOVER_ONLY.includes(s)));
  const groups: Array<{ link: LinkName; workloads: WorkloadSpec[]; runs: number; only?: StrategyName[] }> = o.containers ? CONTAINERS
    : o.switchover ? SWITCHOVER : o.quick ? QUICK : FULL;
  for (const g of groups) {
    if (o.links && !o.links.includes(g.link)) continue;
    for (const workload of g.workloads) {
      if (o.memMiB && !o.memMiB.includes(workload.memMiB)) continue;
      if (o.writeMBps && !o.writeMBps.includes(workload.writeMBps)) continue;
      for (const strategy of strategies) {
        if (g.only && !g.only.includes(strategy)) continue;
        if (appliesTo(strategy, workload.kind)) cells.push({ strategy, workload, link: g.link, runs: o.runs ?? g.runs });
      }
    }
  }
  // Cells stay grouped by link: the runner builds each link once.
  return cells;
}

/**
 * Seconds one run takes, roughly: fill (~1.7 s/GiB here) or memcached load,
 * moving the memory over the link (at best ~1.4 GB/s locally), restore
 * (~0.6 s/GiB), verification and clean-up.
 */
export function estimateRunSeconds(c: Cell): number {
  const gib = c.workload.memMiB / 1024;
  const rate = LINKS[c.link];
  const wireGBps = rate === null ? 1.4 : Math.min(1.4, rate / 8000);
  const setup = { memwork: 0.4 + gib * 1.7, memcached: 1.5 + gib * 6, redis: 1.5 + gib * 12, pythreads: 1 + gib * 4, container: 1.5 + gib * 1.7 }[c.workload.kind];
  return setup + 0.8 + (gib * 1.07) / wireGBps + gib * 0.6 + 0.3;
}

export function estimateSeconds(cells: Cell[]): number {
  return cells.reduce((s, c) => s + c.runs * estimateRunSeconds(c), 0);
}

export function cellLabel(c: Cell): string {
  const w = c.workload;
  return `${w.kind} ${w.memMiB} MiB @${w.writeMBps} MB/s, ${c.link}, ${c.strategy}`;
}
