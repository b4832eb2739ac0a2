// Median and spread of a few runs. With 2-5 samples a standard deviation says
// little; min and max say exactly what was seen.

export interface Summary {
  median: number;
  min: number;
  max: number;
}

export function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export function summarize(xs: number[]): Summary | null {
  const v = xs.filter((x) => Number.isFinite(x));
  if (v.length === 0) return null;
  return { median: median(v), min: Math.min(...v), max: Math.max(...v) };
}

/** Rounds for output: ms and seconds to 3 significant places, big counts to integers. */
export function round(x: number): number {
  if (!Number.isFinite(x)) return x;
  if (Math.abs(x) >= 100) return Math.round(x);
  return Number(x.toPrecision(3));
}

/**
 * Pause ratio of each row against the baseline strategy's row for the same
 * workload and link (below 1: a shorter pause than the baseline's). The runner
 * alternates strategies run by run, so run i of one is paired with run i of
 * the other; the ratio is the median of those pairs, with their min and max.
 */
export interface Ratio { vs: string; median: number; min: number; max: number }

export interface RatioRow {
  strategy: string; workload: string; memMiB: number; writeMBps: number; link: string; status: string;
  samples: Array<{ pauseMs: number }>; pauseRatio?: Ratio;
}

export function addPauseRatios<R extends RatioRow>(rows: R[], baseline: string): R[] {
  const key = (r: RatioRow) => `${r.workload}|${r.memMiB}|${r.writeMBps}|${r.link}`;
  const base = new Map(rows.filter((r) => r.strategy === baseline && r.status === 'ok').map((r) => [key(r), r]));
  for (const r of rows) {
    const b = base.get(key(r));
    if (!b || r === b || r.status !== 'ok') continue;
    const n = Math.min(r.samples.length, b.samples.length);
    const pairs = Array.from({ length: n }, (_, i) => r.samples[i].pauseMs / b.samples[i].pauseMs);
    const s = summarize(pairs);
    if (s) r.pauseRatio = { vs: baseline, median: round(s.median), min: round(s.min), max: round(s.max) };
  }
  return rows;
}
