// Runs the matrix: per link one pair of namespaces, per cell one peer (its
// long-lived agents), per run a fresh workload that is migrated, verified on
// the destination and removed with everything the run left behind.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { TwoHosts } from '../src/testing/hosts';
import { isAlive, killStartedCommands, runCmd } from '../src/testing/proc';
import { cellLabel, estimateRunSeconds, type Cell, type LinkName, type StrategyName } from './matrix';
import { openLink } from './links';
import { makePeer } from './peers';
import { Unavailable, type PeerContext, type RunFigures } from './peers/types';
import { round, summarize, type Summary } from './stats';
import { startMemcached } from './workloads/memcached';
import { startMemwork } from './workloads/memwork';
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
  /** Runs measured (all verified when status is ok). */
  runs: number;
  spread: Record<string, { min: number; max: number }>;
  samples: RunSample[];
  note?: string;
}

export interface RunnerOptions {
  criu: string;
  /** Where runs put images: tmpfs, as CRIU's timings in design.md were taken. */
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
export async function abortCleanup(): Promise<void> {
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

const KEYS = ['pauseMs', 'downtimeMs', 'totalMs', 'bytes', 'rounds', 'sourceFreeMs', 'cpuS'] as const;

function rowOf(cell: Cell, status: Row['status'], samples: RunSample[], note?: string): Row {
  const w = cell.workload;
  const row: Row = {
    strategy: cell.strategy, workload: w.kind, memMiB: w.memMiB, writeMBps: w.writeMBps, link: cell.link, status,
    pauseMs: null, downtimeMs: null, totalMs: null, bytes: null, rounds: null, sourceFreeMs: null, cpuS: null,
    runs: samples.length, spread: {}, ...(note ? { note } : {}),
    samples: samples.map((x) => Object.fromEntries(Object.entries(x).map(([k, v]) => [k, round(v)])) as unknown as RunSample),
  };
  if (status !== 'ok') return row;
  for (const k of KEYS) {
    const s: Summary | null = summarize(samples.map((x) => x[k]));
    if (!s) continue;
    row[k] = round(s.median);
    row.spread[k] = { min: round(s.min), max: round(s.max) };
  }
  return row;
}

/** Deletes the `inet CRIU-*` nft tables a failed restore can leave (design.md section 2), in our namespaces only. */
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
  const start = cell.workload.kind === 'memwork' ? startMemwork(cell.workload, env) : startMemcached(cell.workload, env);
  starting.add(start);
  const wl: BenchWorkload = await start.finally(() => starting.delete(start));
  let restoredPid: number | undefined;
  const stopWl = track(() => wl.stop(restoredPid));
  try {
    await new Promise((r) => setTimeout(r, 300)); // let the writers reach their rate
    await wl.beforeMigration();
    const bytes0 = await link.linkBytes();
    const fig: RunFigures = await peer.migrate(wl.pid, ctx, {
      onRunning: (pid) => { restoredPid = pid; wl.onRunning(pid); },
    });
    restoredPid = fig.restoredPid;
    const bytes = (await link.linkBytes()) - bytes0 + fig.offLinkBytes;
    const verdict = await wl.verify(fig.restoredPid);
    const sample: RunSample = {
      pauseMs: verdict.pauseMs ?? NaN, downtimeMs: fig.downtimeMs, totalMs: fig.totalMs, bytes,
      rounds: fig.rounds, sourceFreeMs: fig.sourceFreeMs, cpuS: fig.cpuS,
      ...(fig.engineBytes !== undefined ? { engineBytes: fig.engineBytes } : {}),
    };
    return { sample, verdict };
  } finally {
    await stopWl();
    await removeCriuNftTables(link);
    fs.rmSync(ctx.runDir, { recursive: true, force: true });
  }
}

export async function runMatrix(cells: Cell[], o: RunnerOptions): Promise<Row[]> {
  const rows: Row[] = [];
  const unavailable = new Map<StrategyName, string>();
  const scratch = path.join(o.scratch, `phaul-bench-${process.pid}`);
  removeStaleScratch(o.scratch);
  fs.mkdirSync(scratch, { recursive: true });
  const dropScratch = track(async () => fs.rmSync(scratch, { recursive: true, force: true }));
  const totalRuns = cells.reduce((s, c) => s + c.runs, 0);
  // Progress: runs planned before each cell, and the estimated seconds after it.
  const before: number[] = [];
  const after: number[] = [];
  cells.reduce((s, c, i) => (before[i] = s) + c.runs, 0);
  cells.reduceRight((s, c, i) => (after[i] = s) + c.runs * estimateRunSeconds(c), 0);
  const t0 = Date.now();
  let link: TwoHosts | null = null;
  let linkName: LinkName | null = null;
  let dropLink: (() => Promise<void>) | null = null;
  let port = 30000;
  try {
    for (const [ci, cell] of cells.entries()) {
      if (linkName !== cell.link) {
        await dropLink?.();
        link = await openLink(cell.link);
        const l = link;
        dropLink = track(() => l.destroy());
        linkName = cell.link;
      }
      const skip = unavailable.get(cell.strategy);
      if (skip !== undefined) {
        rows.push(rowOf(cell, 'unavailable', [], skip));
        continue;
      }
      const peer = makePeer(cell.strategy);
      const cellDir = path.join(scratch, `cell-${ci}`);
      fs.mkdirSync(cellDir, { recursive: true });
      const ctx = (runDir: string): PeerContext => ({
        link: link!, src: link!.a, dst: link!.b, runDir, port: port++, criu: o.criu, memMiB: cell.workload.memMiB,
        log: o.progress,
      });
      const closePeer = track(() => peer.close());
      const samples: RunSample[] = [];
      let status: Row['status'] = 'ok';
      let note: string | undefined;
      try {
        await peer.open(ctx(cellDir));
        for (let r = 0; r < cell.runs; r++) {
          const eta = Math.round(after[ci] + (cell.runs - r) * estimateRunSeconds(cell));
          o.progress(`[${before[ci] + r + 1}/${totalRuns}] ${cellLabel(cell)}: run ${r + 1}/${cell.runs} (elapsed ${Math.round((Date.now() - t0) / 1000)} s, ~${eta} s left)`);
          const { sample, verdict } = await oneRun(cell, link!, ctx(path.join(cellDir, `run-${r}`)), peer);
          if (!verdict.ok) {
            status = 'failed';
            note = `run ${r + 1}: ${verdict.detail}`;
            o.progress(`  FAILED: ${note}`);
            break; // a cell that does not verify is not averaged
          }
          samples.push(sample);
          o.progress(`  pause ${sample.pauseMs.toFixed(0)} ms, downtime ${sample.downtimeMs.toFixed(0)} ms, total ${sample.totalMs.toFixed(0)} ms, ${(sample.bytes / 2 ** 20).toFixed(0)} MiB; ${verdict.detail}`);
        }
      } catch (e) {
        if (e instanceof Unavailable) {
          status = 'unavailable';
          note = e.message;
          unavailable.set(cell.strategy, e.message);
          o.progress(`  ${cell.strategy} unavailable: ${e.message}`);
        } else {
          status = 'failed';
          note = (e as Error).message;
          o.progress(`  FAILED: ${note}`);
        }
      } finally {
        await closePeer();
        fs.rmSync(cellDir, { recursive: true, force: true });
      }
      rows.push(rowOf(cell, status, status === 'ok' ? samples : [], note));
    }
  } finally {
    await dropLink?.();
    await dropScratch();
  }
  return rows;
}
