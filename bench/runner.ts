// Runs the matrix: per link one pair of namespaces, per cell one peer (its
// long-lived agents), per run a fresh workload that is migrated, verified on
// the destination and removed with everything the run left behind. The
// strategies of one workload take turns run by run.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { TwoHosts } from '../src/testing/hosts';
import { isAlive, killStartedCommands, runCmd } from '../src/testing/proc';
import { cellLabel, estimateRunSeconds, estimateSeconds, type Cell, type LinkName, type StrategyName } from './matrix';
import { openLink } from './links';
import { makePeer } from './peers';
import { Unavailable, type PeerContext, type RunFigures } from './peers/types';
import { round, summarize, type Ratio, type Summary } from './stats';
import { startMemcached } from './workloads/memcached';
import { startMemwork } from './workloads/memwork';
import { startPythreads } from './workloads/pythreads';
import { startRedis } from './workloads/redis';
import { runtimeFor, startContainerMemwork } from './workloads/container';
import { sampleDestinationMemory } from './dest-memory';
import { STORE_DIR } from './peers/phaul-fast';
import { ownCpuSeconds, watchFrozenCpu } from './workload-cpu';
import { freshWriteMs } from './fresh-memory';
import type { BenchWorkload, Verdict } from './workloads/types';

export interface RunSample {
  pauseMs: number;
  downtimeMs: number;
  totalMs: number;
  bytes: number;
  engineBytes?: number;
  rounds: number;
  sourceFreeMs: number;
  cpuS: number;
  /** CPU seconds per GiB sent (cpuS over bytes): what moving memory costs, comparable across sizes. */
  cpuSPerGiB: number;
  /** cpuS split by side: the source's agent (or CRIU dump) and the destination's, each with their children. */
  cpuSourceS: number;
  cpuDestS: number;
  /**
   * CPU the migration spent inside the workload's own tasks, not in cpuS
   * (bench/workload-cpu.ts): the source's while frozen (CRIU's parasite) and
   * the restored tasks' when the migration ended (CRIU's restorer, its page copies).
   */
  cpuWorkloadSourceS: number;
  cpuWorkloadDestS: number;
  /** The whole migration's CPU: cpuS plus both of the above. */
  cpuWholeS: number;
  /** The first pass over memory, MB/s (RunFigures.copyMBps); NaN when the strategy has none. */
  copyMBps: number;
  phases?: Record<string, number>;
  /**
   * The workload's longest pause against the engine's downtime (when both say when): how long
   * before the freeze it began and after the resume it ended (negative: inside). A pause that
   * is the downtime has both near 0; one that ends well after `running` is the fill's.
   */
  pauseVsDowntime?: { startBeforeFreezeMs: number; endAfterRunningMs: number };
  /** phaul-fast pre-copy modes: the frozen round's pages, bytes and times (RunFigures.frozenRound). */
  frozenRound?: Record<string, number>;
  /** The destination's peak: page data on tmpfs plus the restored processes' RSS (bench/dest-memory.ts). */
  destPeakMiB: number;
  /** Fill after resume (hybrid): restore's end to the last page, its rate, fault latency. NaN when none. */
  fillMs: number;
  fillMBps: number;
  faultP50Us: number;
  faultP99Us: number;
  faultMaxUs: number;
  /** CPU ms of CRIU's dump inside the pause (CRIU and its parasite), NaN when not reported. */
  criuDumpCpuMs: number;
}

export interface Row {
  strategy: StrategyName;
  workload: string;
  memMiB: number;
  writeMBps: number;
  link: LinkName;
  status: 'ok' | 'failed' | 'unavailable';
  /** Medians over the runs (null unless status is ok). */
  pauseMs: number | null;
  downtimeMs: number | null;
  totalMs: number | null;
  bytes: number | null;
  rounds: number | null;
  sourceFreeMs: number | null;
  cpuS: number | null;
  cpuSPerGiB: number | null;
  cpuSourceS?: number | null;
  cpuDestS?: number | null;
  cpuWorkloadSourceS?: number | null;
  cpuWorkloadDestS?: number | null;
  cpuWholeS?: number | null;
  copyMBps?: number | null;
  /** Median of each phase the engine reported, in the engine's order. */
  phases?: Record<string, number>;
  destPeakMiB?: number | null;
  fillMs?: number | null;
  fillMBps?: number | null;
  faultP50Us?: number | null;
  faultP99Us?: number | null;
  faultMaxUs?: number | null;
  criuDumpCpuMs?: number | null;
  /** This machine writing as much fresh memory as the workload has, measured next to the cell's runs (bench/fresh-memory.ts). */
  freshWriteMs?: number;
  /** Runs measured (all verified when status is ok). */
  runs: number;
  spread: Record<string, { min: number; max: number }>;
  samples: RunSample[];
  /** Pause against criu:page-server's on the same workload and link (bench/stats.ts addPauseRatios). */
  pauseRatio?: Ratio;
  note?: string;
}

export interface RunnerOptions {
  criu: string;
  /** Where runs put images: tmpfs, as CRIU's timings in docs/DESIGN.md section 11 were taken. */
  scratch: string;
  progress(msg: string): void;
}

/**
 * Clean-ups of what is live right now (workload, link, scratch), so an
 * interrupted benchmark (Ctrl-C) leaves no processes, namespaces or images.
 */
const live = new Set<() => Promise<void>>();
/** Workloads still starting: an interrupt waits for them, then stops them. */
const starting = new Set<Promise<BenchWorkload>>();
/** Set by abortCleanup: no new run may start (a run that failed because its CRIU was killed would move on to the next). */
let interrupted = false;
export async function abortCleanup(): Promise<void> {
  interrupted = true;
  killStartedCommands(); // CRIU processes first: a lazy dump would wait for its client forever
  for (const p of starting) await p.then((w) => w.stop(), () => {});
  const fns = [...live].reverse();
  live.clear();
  for (const f of fns) await f().catch(() => {});
}
function track(f: () => Promise<void>): () => Promise<void> {
  const g = async () => { live.delete(g); await f(); };
  live.add(g);
  return g;
}

const KEYS = ['pauseMs', 'downtimeMs', 'totalMs', 'bytes', 'rounds', 'sourceFreeMs', 'cpuS', 'cpuSPerGiB', 'cpuSourceS', 'cpuDestS', 'cpuWorkloadSourceS', 'cpuWorkloadDestS', 'cpuWholeS', 'copyMBps', 'destPeakMiB', 'fillMs',
  'fillMBps', 'faultP50Us', 'faultP99Us', 'faultMaxUs', 'criuDumpCpuMs'] as const;

function rowOf(cell: Cell, status: Row['status'], samples: RunSample[], note?: string): Row {
  const w = cell.workload;
  const row: Row = {
    strategy: cell.strategy, workload: w.kind, memMiB: w.memMiB, writeMBps: w.writeMBps, link: cell.link, status,
    pauseMs: null, downtimeMs: null, totalMs: null, bytes: null, rounds: null, sourceFreeMs: null, cpuS: null, cpuSPerGiB: null, cpuSourceS: null, cpuDestS: null, cpuWorkloadSourceS: null, cpuWorkloadDestS: null, cpuWholeS: null, copyMBps: null,
    destPeakMiB: null, fillMs: null, fillMBps: null, faultP50Us: null, faultP99Us: null, faultMaxUs: null, criuDumpCpuMs: null,
    runs: samples.length, spread: {}, ...(note ? { note } : {}),
    samples: samples.map((x) => Object.fromEntries(Object.entries(x).map(([k, v]) => [k, typeof v === 'number' ? round(v) : v])) as unknown as RunSample),
  };
  if (status !== 'ok') return row;
  const names = [...new Set(samples.flatMap((x) => Object.keys(x.phases ?? {})))];
  if (names.length) {
    row.phases = {};
    for (const n of names) {
      const s = summarize(samples.map((x) => x.phases?.[n] ?? 0));
      if (s) row.phases[n] = round(s.median);
    }
  }
  for (const k of KEYS) {
    const s: Summary | null = summarize(samples.map((x) => x[k]));
    if (!s) continue;
    row[k] = round(s.median);
    row.spread[k] = { min: round(s.min), max: round(s.max) };
  }
  return row;
}

/** Deletes the `inet CRIU-*` nft tables a failed restore can leave (docs/DESIGN.md section 2), in our namespaces only. */
async function removeCriuNftTables(link: TwoHosts): Promise<void> {
  for (const h of new Set([link.a, link.b])) {
    if (!h.netnsPath) continue;
    const r = await runCmd(['nsenter', `--net=${h.netnsPath}`, 'nft', 'list', 'tables'], { timeoutMs: 10_000 });
    for (const m of r.stdout.matchAll(/^table (\S+) (CRIU-\S+)$/gm))
      await runCmd(['nsenter', `--net=${h.netnsPath}`, 'nft', 'delete', 'table', m[1], m[2]], { timeoutMs: 10_000 });
  }
}

/** Scratch directories of earlier benchmark processes that died without cleaning up. */
export function removeStaleScratch(parent: string): void {
  let names: string[] = [];
  try { names = fs.readdirSync(parent); } catch { return; }
  for (const n of names) {
    const m = /^phaul-bench-(\d+)$/.exec(n);
    if (m && Number(m[1]) !== process.pid && !isAlive(Number(m[1]))) fs.rmSync(path.join(parent, n), { recursive: true, force: true });
  }
}

async function oneRun(cell: Cell, link: TwoHosts, ctx: PeerContext, peer: ReturnType<typeof makePeer>): Promise<{ sample: RunSample; verdict: Verdict }> {
  fs.mkdirSync(ctx.runDir, { recursive: true });
  const env = { link, src: link.a, dst: link.b, dir: ctx.runDir };
  const w = cell.workload;
  const start: Promise<BenchWorkload> = w.kind === 'container' ? startContainerMemwork(w, env, runtimeFor(cell.strategy))
    : { memwork: startMemwork, memcached: startMemcached, redis: startRedis, pythreads: startPythreads }[w.kind](w, env);
  starting.add(start);
  const wl: BenchWorkload = await start.finally(() => starting.delete(start));
  if (interrupted) {
    await wl.stop();
    throw new Error('interrupted');
  }
  let restoredPid: number | undefined;
  const stopWl = track(() => wl.stop(restoredPid));
  try {
    await new Promise((r) => setTimeout(r, 300)); // let the writers reach their rate
    await wl.beforeMigration();
    const bytes0 = await link.linkBytes();
    // criu:* keep the destination's images in the run's dst/, phaul-fast its page stores in the cell's STORE_DIR.
    const mem = sampleDestinationMemory(wl.pid, [path.join(ctx.runDir, 'dst'), path.join(path.dirname(ctx.runDir), STORE_DIR)],
      ctx.dst.netnsPath);
    let fig: RunFigures;
    let destPeak = 0;
    const frozenCpu = watchFrozenCpu(wl.pid);
    let workloadSourceS = 0;
    try {
      fig = await peer.migrate(wl.pid, { ...ctx, container: wl.container, tcpClose: wl.tcpClose }, {
        onRunning: (pid) => { restoredPid = pid; wl.onRunning(pid); },
      });
    } finally {
      destPeak = mem.stop();
      workloadSourceS = frozenCpu.stop();
    }
    restoredPid = fig.restoredPid;
    // Before verify(), which makes the workload check every page on its own CPU.
    const workloadDestS = ownCpuSeconds(fig.restoredPid) ?? NaN;
    const bytes = (await link.linkBytes()) - bytes0 + fig.offLinkBytes;
    const verdict = await wl.verify(fig.restoredPid);
    const sample: RunSample = {
      pauseMs: verdict.pauseMs ?? NaN, downtimeMs: fig.downtimeMs, totalMs: fig.totalMs, bytes,
      rounds: fig.rounds, sourceFreeMs: fig.sourceFreeMs, cpuS: fig.cpuS, cpuSPerGiB: bytes > 0 ? fig.cpuS / (bytes / 2 ** 30) : NaN,
      cpuSourceS: fig.cpuSourceS, cpuDestS: fig.cpuS - fig.cpuSourceS,
      cpuWorkloadSourceS: workloadSourceS, cpuWorkloadDestS: workloadDestS, cpuWholeS: fig.cpuS + workloadSourceS + workloadDestS,
      copyMBps: fig.copyMBps ?? NaN,
      destPeakMiB: destPeak / 2 ** 20,
      fillMs: fig.fill?.fillMs ?? NaN, fillMBps: fig.fill ? fig.fill.pages * 4096 / 1e6 / (fig.fill.fillMs / 1000) : NaN,
      faultP50Us: fig.fill?.faultP50Us ?? NaN, faultP99Us: fig.fill?.faultP99Us ?? NaN, faultMaxUs: fig.fill?.faultMaxUs ?? NaN,
      criuDumpCpuMs: fig.criuDumpCpuMs ?? NaN,
      ...(fig.engineBytes !== undefined ? { engineBytes: fig.engineBytes } : {}),
      ...(fig.phases ? { phases: fig.phases } : {}),
      ...(fig.frozenRound ? { frozenRound: fig.frozenRound } : {}),
      ...(fig.frozenAt !== undefined && fig.runningAt !== undefined && verdict.pauseEndMs !== undefined && verdict.pauseMs !== null ? {
        pauseVsDowntime: {
          startBeforeFreezeMs: Math.round(fig.frozenAt - (verdict.pauseEndMs - verdict.pauseMs)),
          endAfterRunningMs: Math.round(verdict.pauseEndMs - fig.runningAt),
        },
      } : {}),
    };
    return { sample, verdict };
  } finally {
    await stopWl();
    await removeCriuNftTables(link);
    fs.rmSync(ctx.runDir, { recursive: true, force: true });
  }
}

/** Cells of one workload on one link: their strategies take turns, run by run. */
function groupCells(cells: Cell[]): number[][] {
  const groups: number[][] = [];
  const key = (c: Cell) => `${c.link}|${c.workload.kind}|${c.workload.memMiB}|${c.workload.writeMBps}|${c.runs}`;
  cells.forEach((c, i) => {
    const g = groups[groups.length - 1];
    if (g && key(cells[g[0]]) === key(c)) g.push(i);
    else groups.push([i]);
  });
  return groups;
}

/**
 * Runs every cell and returns one row per cell, in the cells' order. The
 * strategies measured on one workload and link alternate run by run (A B C,
 * A B C, ...) instead of finishing one before the next starts: whatever the
 * machine drifts through meanwhile (other tenants, memory the hypervisor took
 * back) then falls on all of them alike, which is what makes their ratio fair.
 */
export async function runMatrix(cells: Cell[], o: RunnerOptions): Promise<Row[]> {
  const rows: Row[] = new Array(cells.length);
  const unavailable = new Map<StrategyName, string>();
  const scratch = path.join(o.scratch, `phaul-bench-${process.pid}`);
  removeStaleScratch(o.scratch);
  fs.mkdirSync(scratch, { recursive: true });
  const dropScratch = track(async () => fs.rmSync(scratch, { recursive: true, force: true }));
  const totalRuns = cells.reduce((s, c) => s + c.runs, 0);
  let done = 0;
  let secondsLeft = estimateSeconds(cells);
  const t0 = Date.now();
  let link: TwoHosts | null = null;
  let linkName: LinkName | null = null;
  let dropLink: (() => Promise<void>) | null = null;
  let port = 30000;
  try {
    for (const group of groupCells(cells)) {
      const first = cells[group[0]];
      if (linkName !== first.link) {
        await dropLink?.();
        link = await openLink(first.link);
        const l = link;
        dropLink = track(() => l.destroy());
        linkName = first.link;
      }
      interface Lane {
        ci: number;
        cell: Cell;
        peer: ReturnType<typeof makePeer>;
        dir: string;
        samples: RunSample[];
        status: Row['status'];
        note?: string;
        close: () => Promise<void>;
      }
      const lanes: Lane[] = [];
      let fresh = NaN;
      const ctx = (cell: Cell, runDir: string): PeerContext => ({
        link: link!, src: link!.a, dst: link!.b, runDir, port: port++, criu: o.criu, memMiB: cell.workload.memMiB, workloadKind: cell.workload.kind,
        log: o.progress,
      });
      const fail = (lane: Lane, e: unknown) => {
        if (e instanceof Unavailable) {
          lane.status = 'unavailable';
          lane.note = e.message;
          unavailable.set(lane.cell.strategy, e.message);
          o.progress(`  ${lane.cell.strategy} unavailable: ${e.message}`);
        } else {
          lane.status = 'failed';
          lane.note = (e as Error).message;
          o.progress(`  FAILED: ${lane.note}`);
        }
      };
      try {
        for (const ci of group) {
          const cell = cells[ci];
          const skip = unavailable.get(cell.strategy);
          if (skip !== undefined) {
            rows[ci] = rowOf(cell, 'unavailable', [], skip);
            continue;
          }
          const peer = makePeer(cell.strategy);
          const dir = path.join(scratch, `cell-${ci}`);
          fs.mkdirSync(dir, { recursive: true });
          const lane: Lane = { ci, cell, peer, dir, samples: [], status: 'ok', close: track(() => peer.close()) };
          lanes.push(lane);
          try {
            await peer.open(ctx(cell, dir));
          } catch (e) {
            fail(lane, e);
          }
        }
        // The floor for any fill of this much memory, measured next to the runs.
        fresh = await freshWriteMs(first.workload.memMiB);
        o.progress(`  this machine writes ${first.workload.memMiB} MiB of fresh memory in ${fresh.toFixed(0)} ms`);
        for (let r = 0; r < first.runs; r++) {
          for (const lane of lanes) {
            if (interrupted) throw new Error('interrupted');
            if (lane.status !== 'ok') continue;
            const { cell } = lane;
            secondsLeft -= estimateRunSeconds(cell);
            o.progress(`[${++done}/${totalRuns}] ${cellLabel(cell)}: run ${r + 1}/${cell.runs} (elapsed ${Math.round((Date.now() - t0) / 1000)} s, ~${Math.max(0, Math.round(secondsLeft))} s left)`);
            try {
              const { sample, verdict } = await oneRun(cell, link!, ctx(cell, path.join(lane.dir, `run-${r}`)), lane.peer);
              if (!verdict.ok) {
                // A cell that does not verify is not averaged.
                fail(lane, new Error(`run ${r + 1}: ${verdict.detail}`));
                continue;
              }
              lane.samples.push(sample);
              o.progress(`  pause ${sample.pauseMs.toFixed(0)} ms, downtime ${sample.downtimeMs.toFixed(0)} ms, total ${sample.totalMs.toFixed(0)} ms, ${(sample.bytes / 2 ** 20).toFixed(0)} MiB; ${verdict.detail}`);
            } catch (e) {
              fail(lane, e);
            }
          }
        }
      } finally {
        for (const lane of lanes) {
          await lane.close();
          fs.rmSync(lane.dir, { recursive: true, force: true });
          rows[lane.ci] = rowOf(lane.cell, lane.status, lane.status === 'ok' ? lane.samples : [], lane.note);
          if (Number.isFinite(fresh)) rows[lane.ci].freshWriteMs = round(fresh);
        }
      }
    }
  } finally {
    await dropLink?.();
    await dropScratch();
  }
  return rows;
}
