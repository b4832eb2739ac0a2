// When to stop pre-copying and switch over (docs/DESIGN.md section 9), in the
// spirit of QEMU's migration: expected downtime = pending bytes / bandwidth +
// the fixed cost of a switchover; switch over once that fits the limit; when
// the workload dirties memory faster than the link can carry it, throttle it
// stepwise (QEMU's auto-converge: 20%, +10% per step, at most 99%) or switch
// over anyway. It knows nothing of sockets or processes: the orchestrator
// records each finished round and asks decide() before starting the next one.
import { PhaulError } from '../errors';

export type SwitchoverAction = 'continue' | 'switchover' | 'throttle';

export interface SwitchoverConfig {
  /** Pause we aim for (QEMU's default downtime limit). Default 300. */
  downtimeLimitMs?: number;
  /** Rounds recorded after which decide() always says switchover. Default 30. */
  maxRounds?: number;
  /** Link cap the orchestrator enforces; estimates use min(measured, cap). */
  maxBandwidthBps?: number;
  /** Allow throttling the workload when it does not converge. Default false. */
  autoConverge?: boolean;
  /** What to do when not converging. Default 'throttle' with autoConverge, else 'switchover'. */
  onNoConvergence?: 'switchover' | 'throttle';
  /** QEMU cpu-throttle-initial / -increment / max-cpu-throttle. Defaults 20, 10, 99. */
  throttleInitialPct?: number;
  throttleIncrementPct?: number;
  throttleMaxPct?: number;
  /** A round makes no progress when its dirty rate exceeds this % of the bandwidth (QEMU throttle-trigger-threshold). Default 50. */
  dirtyThresholdPct?: number;
  /** Consecutive rounds without progress that count as "not converging" (QEMU: 2). Default 2. */
  noProgressRounds?: number;
  /** Initial estimate of the switchover's fixed cost (CRIU dump + restore), until setFixedCostMs/decide update it. Default 100. */
  fixedCostMs?: number;
  pageSize?: number;
  /** Rounds smaller than this (bytes, or send time in ms) do not update the bandwidth estimate. Defaults 1 MiB, 20 ms. */
  minMeasureBytes?: number;
  minMeasureMs?: number;
  /** Weight of the history in the bandwidth estimate, per measurable round (0 = last round only). Default 0.5. */
  bandwidthDecay?: number;
  /**
   * How long the frozen round may take, timed at the last round's rate (its bytes over its send and
   * store time: small rounds are scattered pages, whose cost goes by the page, not by the bandwidth
   * the big first round measured). That round runs inside the pause beside CRIU's dump, competing
   * with it for the CPUs; what it moves within CRIU's dump time costs the pause nothing. When the
   * expected downtime fits the limit but the pending bytes would take longer than this, decide()
   * says continue as long as one more live round (timed the same way) would leave at most two
   * thirds as much: that round costs the running workload nothing. Default 0: off (switch over as soon as the
   * limit allows).
   */
  frozenBudgetMs?: number;
  /** With frozenBudgetMs: pending bytes at or under this never ask for one more round, whatever the rate. Default 0. */
  settleBytes?: number;
}

/** One finished pre-copy round. */
export interface RoundStats {
  round: number;
  /** Pages sent and their bytes on the wire. */
  pages: number;
  bytes: number;
  /** Whole round, its scan included. */
  ms: number;
  scanMs: number;
  /** Pages this round's scan reported dirty: written during the `sinceLastScanMs` before it. */
  dirtyPagesFound: number;
  /** Time between the previous scan and this round's; 0 or absent for the first scan (all of memory, not a dirty-rate sample). */
  sinceLastScanMs?: number;
}

export interface DecideInput {
  /** Updated fixed switchover cost (kept for later calls). */
  fixedCostMs?: number;
  /** Time since the last scan: what has been dirtied since is what a switchover now must send.
   *  Default: the last round's send time (decide() called right after a round). */
  sinceLastScanMs?: number;
  /** The pending set when the caller already knows it (scanned, not yet sent): overrides the estimate. */
  pendingPages?: number;
}

export interface SwitchoverDecision {
  action: SwitchoverAction;
  reason: string;
  /** pendingBytes / bandwidthBps + last scan time + fixed cost; Infinity when nothing has been measured. */
  expectedDowntimeMs: number;
  bandwidthBps: number;
  /** Last measured rate at which the workload dirties memory (distinct pages per interval). */
  dirtyRateBps: number;
  pendingBytes: number;
  /** Throttle the workload must run at from now on (0 = none); for 'throttle' the new, higher level. */
  throttlePct: number;
}

/** Transfer of the pending bytes plus the fixed part; non-decreasing in pendingBytes, infinite with no bandwidth. */
export function expectedDowntimeMs(pendingBytes: number, bandwidthBps: number, fixedMs: number): number {
  if (pendingBytes <= 0) return fixedMs;
  if (!(bandwidthBps > 0)) return Infinity;
  return (pendingBytes / bandwidthBps) * 1000 + fixedMs;
}

const MB = 1e6;
const fmtRate = (bps: number) => `${(bps / MB).toFixed(1)} MB/s`;
const fmtMs = (ms: number) => (Number.isFinite(ms) ? `${Math.round(ms)} ms` : 'unbounded');

type Resolved = Required<Omit<SwitchoverConfig, 'maxBandwidthBps'>> & { maxBandwidthBps?: number };

export class SwitchoverPolicy {
  readonly config: Readonly<Resolved>;
  private fixedCost: number;
  private rounds = 0;
  private lastRound = -Infinity;
  // Bandwidth: bytes and send time, each decayed by bandwidthDecay per
  // measurable round; their ratio weighs a round by its size, so one big round
  // (a real measurement) outweighs a burst of tiny ones, and the link's current
  // state still shows within two or three rounds. The last round alone would
  // swing with every small round, where latency (the round's acknowledgement)
  // dominates; a plain EWMA of per-round rates would give those equal weight.
  private bwBytes = 0;
  private bwMs = 0;
  // Every round, measurable or not: bytes / time is a lower bound on the link
  // (latency only slows a round), used until one round is big enough.
  private allBytes = 0;
  private allMs = 0;
  private maxPages = 0;
  private lastScanMs = 0;
  private lastSendMs = 0;
  private lastBytes = 0;
  private dirtyRate: number | null = null;
  private highRounds = 0;
  private pct = 0;
  private told: SwitchoverDecision | undefined;

  constructor(config: SwitchoverConfig = {}) {
    const autoConverge = config.autoConverge ?? false;
    const c: Resolved = {
      downtimeLimitMs: config.downtimeLimitMs ?? 300,
      maxRounds: config.maxRounds ?? 30,
      maxBandwidthBps: config.maxBandwidthBps,
      autoConverge,
      onNoConvergence: config.onNoConvergence ?? (autoConverge ? 'throttle' : 'switchover'),
      throttleInitialPct: config.throttleInitialPct ?? 20,
      throttleIncrementPct: config.throttleIncrementPct ?? 10,
      throttleMaxPct: config.throttleMaxPct ?? 99,
      dirtyThresholdPct: config.dirtyThresholdPct ?? 50,
      noProgressRounds: config.noProgressRounds ?? 2,
      fixedCostMs: config.fixedCostMs ?? 100,
      pageSize: config.pageSize ?? 4096,
      minMeasureBytes: config.minMeasureBytes ?? 1 << 20,
      minMeasureMs: config.minMeasureMs ?? 20,
      bandwidthDecay: config.bandwidthDecay ?? 0.5,
      frozenBudgetMs: config.frozenBudgetMs ?? 0,
      settleBytes: config.settleBytes ?? 0,
    };
    const bad = (what: string) => { throw new PhaulError('usage', `switchover policy: ${what}`); };
    const num = (k: keyof Resolved, lo: number, hi: number, int = false) => {
      const v = c[k] as number;
      if (typeof v !== 'number' || !(v >= lo && v <= hi) || (int && !Number.isInteger(v))) bad(`${k} must be ${int ? 'an integer ' : ''}in [${lo}, ${hi}], got ${v}`);
    };
    num('downtimeLimitMs', 1, 3_600_000);
    num('maxRounds', 1, 1_000_000, true);
    if (c.maxBandwidthBps !== undefined && !(c.maxBandwidthBps > 0 && Number.isFinite(c.maxBandwidthBps))) bad(`maxBandwidthBps must be > 0, got ${c.maxBandwidthBps}`);
    num('throttleInitialPct', 1, 99);
    num('throttleIncrementPct', 1, 99);
    num('throttleMaxPct', c.throttleInitialPct, 99);
    num('dirtyThresholdPct', 1, 1000);
    num('noProgressRounds', 1, 1000, true);
    num('fixedCostMs', 0, 3_600_000);
    num('pageSize', 512, 1 << 30, true);
    num('minMeasureBytes', 0, Number.MAX_SAFE_INTEGER);
    num('minMeasureMs', 0, 3_600_000);
    num('bandwidthDecay', 0, 0.99);
    num('frozenBudgetMs', 0, 3_600_000);
    num('settleBytes', 0, Number.MAX_SAFE_INTEGER);
    if (c.onNoConvergence !== 'switchover' && c.onNoConvergence !== 'throttle') bad(`onNoConvergence must be 'switchover' or 'throttle', got '${c.onNoConvergence}'`);
    if (c.onNoConvergence === 'throttle' && !autoConverge) bad(`onNoConvergence 'throttle' needs autoConverge`);
    this.config = Object.freeze(c);
    this.fixedCost = c.fixedCostMs;
  }

  /** Throttle the workload runs at, as far as this policy told the caller. */
  get throttlePct(): number {
    return this.pct;
  }

  get fixedCostMs(): number {
    return this.fixedCost;
  }

  setFixedCostMs(ms: number): void {
    if (!(ms >= 0 && Number.isFinite(ms))) throw new PhaulError('failed', `switchover policy: fixed cost must be >= 0 ms, got ${ms}`);
    this.fixedCost = ms;
  }

  /** Link bandwidth estimate in bytes/s (capped), 0 before anything was sent. */
  get bandwidthBps(): number {
    const measured = this.bwMs > 0 ? (this.bwBytes / this.bwMs) * 1000 : this.allMs > 0 ? (this.allBytes / this.allMs) * 1000 : 0;
    const cap = this.config.maxBandwidthBps;
    return cap !== undefined && measured > cap ? cap : measured;
  }

  /**
   * The last round's pages were all stored `ms` after record() (the caller awaited its
   * acknowledgement only then: live rounds are pipelined): that time is part of what the round
   * cost, so the frozen round's estimate (frozenBudgetMs) counts it. The bandwidth estimate keeps
   * what was recorded.
   */
  noteStoreLag(ms: number): void {
    if (!(ms >= 0 && Number.isFinite(ms))) throw new PhaulError('failed', `switchover policy: store lag must be >= 0 ms, got ${ms}`);
    this.lastSendMs += ms;
  }

  /** Records a finished round. Rounds must come in increasing order. */
  record(r: RoundStats): void {
    for (const k of ['round', 'pages', 'bytes', 'ms', 'scanMs', 'dirtyPagesFound'] as const) {
      if (typeof r[k] !== 'number' || !(r[k] >= 0) || !Number.isFinite(r[k])) throw new PhaulError('failed', `switchover policy: round ${r.round}: ${k} must be a number >= 0, got ${r[k]}`);
    }
    const since = r.sinceLastScanMs ?? 0;
    if (!(since >= 0 && Number.isFinite(since))) throw new PhaulError('failed', `switchover policy: round ${r.round}: sinceLastScanMs must be >= 0, got ${since}`);
    if (r.round <= this.lastRound) throw new PhaulError('failed', `switchover policy: round ${r.round} recorded after round ${this.lastRound}`);
    if (r.scanMs > r.ms) throw new PhaulError('failed', `switchover policy: round ${r.round}: scanMs ${r.scanMs} > ms ${r.ms} (ms includes the scan)`);
    const c = this.config;

    // This round ran under what decide() last told the caller. After a throttle
    // step the "no progress" count starts over, as in QEMU: the next sample was
    // mostly dirtied before the step (a scan reports the interval before it), so
    // the step needs `noProgressRounds` fresh samples before the next one.
    if (this.told?.action === 'throttle') {
      this.pct = this.told.throttlePct;
      this.highRounds = 0;
    }
    this.told = undefined;

    this.lastRound = r.round;
    this.rounds++;
    const sendMs = r.ms - r.scanMs;
    this.lastScanMs = r.scanMs;
    this.lastSendMs = sendMs;
    this.lastBytes = r.bytes;
    this.allBytes += r.bytes;
    this.allMs += Math.max(sendMs, 1); // a 0 ms round took < 1 ms: bytes/1 ms is still a lower bound
    if (r.bytes >= c.minMeasureBytes && sendMs >= c.minMeasureMs && sendMs > 0) {
      this.bwBytes = this.bwBytes * c.bandwidthDecay + r.bytes;
      this.bwMs = this.bwMs * c.bandwidthDecay + sendMs;
    }
    this.maxPages = Math.max(this.maxPages, r.pages, r.dirtyPagesFound);
    if (since > 0) {
      // The latest sample, not an average: a throttle step changes the rate and
      // history would hide it. Distinct pages per interval: a long interval
      // (round 1 after the full copy) under-reports a hot set that gets
      // rewritten; the shorter later rounds see closer to the true rate.
      this.dirtyRate = (r.dirtyPagesFound * c.pageSize) / (since / 1000);
      const high = this.dirtyRate > (c.dirtyThresholdPct / 100) * this.bandwidthBps;
      this.highRounds = high ? this.highRounds + 1 : 0;
    }
  }

  /**
   * What to do now, before the next scan. Calling it again without a new
   * record() gives the answer for the same state; the last answer is the one
   * the policy assumes the caller acted on.
   */
  decide(input: DecideInput = {}): SwitchoverDecision {
    const c = this.config;
    if (input.fixedCostMs !== undefined) this.setFixedCostMs(input.fixedCostMs);
    const bw = this.bandwidthBps;
    const rate = this.dirtyRate ?? 0;
    const out = (action: SwitchoverAction, reason: string, pendingBytes: number, expected: number, throttlePct = this.pct): SwitchoverDecision =>
      (this.told = { action, reason, expectedDowntimeMs: expected, bandwidthBps: bw, dirtyRateBps: rate, pendingBytes, throttlePct });

    if (this.rounds === 0) return out('continue', 'no round recorded yet', 0, Infinity);

    // Pending: what was dirtied since the last scan. Unknown rate (only the full
    // copy so far): all of memory, an upper bound, so a tiny tree can still
    // switch over at once. Never more than all of memory either.
    const mem = this.maxPages * c.pageSize;
    const since = input.sinceLastScanMs ?? this.lastSendMs;
    if (!(since >= 0 && Number.isFinite(since))) throw new PhaulError('failed', `switchover policy: sinceLastScanMs must be >= 0, got ${since}`);
    let pending: number;
    if (input.pendingPages !== undefined) {
      if (!(input.pendingPages >= 0 && Number.isFinite(input.pendingPages))) throw new PhaulError('failed', `switchover policy: pendingPages must be >= 0, got ${input.pendingPages}`);
      pending = input.pendingPages * c.pageSize;
    } else {
      pending = this.dirtyRate === null ? mem : Math.min(mem, this.dirtyRate * (since / 1000));
    }
    pending = Math.round(pending);
    // The final scan runs inside the pause too: count it with the fixed cost.
    const fixedPart = this.fixedCost + this.lastScanMs;
    const expected = expectedDowntimeMs(pending, bw, fixedPart);
    const transferMs = expected - fixedPart;
    // When the fixed part alone nearly fills the limit, the limit cannot be met
    // whatever we send; more rounds would only loop. Then accept a transfer of
    // up to 10% of the limit on top of the fixed part.
    const budget = Math.max(c.downtimeLimitMs - fixedPart, 0.1 * c.downtimeLimitMs);
    const e = fmtMs(expected);

    if (transferMs <= budget) {
      const settle = this.settleRound(pending);
      if (settle) return out('continue', `expected downtime ${e} fits the limit, but ${settle}`, pending, expected);
      const why = expected <= c.downtimeLimitMs
        ? `expected downtime ${e} <= limit ${c.downtimeLimitMs} ms`
        : `fixed part ${fmtMs(fixedPart)} (switchover cost + scan) alone exceeds the ${c.downtimeLimitMs} ms limit; pending transfer ${fmtMs(transferMs)} <= ${fmtMs(budget)}, expected downtime ${e}`;
      return out('switchover', why, pending, expected);
    }
    if (this.rounds >= c.maxRounds) {
      return out('switchover', `reached maxRounds (${c.maxRounds}) with expected downtime ${e} over the ${c.downtimeLimitMs} ms limit`, pending, expected);
    }
    if (this.dirtyRate === null) {
      return out('continue', `expected downtime ${e} > limit ${c.downtimeLimitMs} ms (no dirty-rate sample yet: assuming all ${(mem / 1048576).toFixed(1)} MiB)`, pending, expected);
    }
    if (this.highRounds >= c.noProgressRounds) {
      const stuck = `not converging: dirty rate ${fmtRate(rate)} > ${c.dirtyThresholdPct}% of bandwidth ${fmtRate(bw)} for ${this.highRounds} rounds`;
      if (c.onNoConvergence === 'switchover') return out('switchover', `${stuck}; switching over with expected downtime ${e}`, pending, expected);
      if (this.pct >= c.throttleMaxPct) return out('continue', `${stuck}; throttle already at its maximum ${this.pct}%`, pending, expected);
      const next = this.pct === 0 ? c.throttleInitialPct : Math.min(this.pct + c.throttleIncrementPct, c.throttleMaxPct);
      return out('throttle', `${stuck}; throttling the workload to ${next}%`, pending, expected, next);
    }
    return out('continue', `expected downtime ${e} > limit ${c.downtimeLimitMs} ms`, pending, expected);
  }

  /**
   * Why one more live round should come before a switchover the limit allows (frozenBudgetMs), or
   * undefined. The pending bytes, at the last round's rate (its send and store time over its
   * bytes, at least 1 ms), would take the frozen round longer than its budget; one more live round
   * would take a scan like the last one's and the same transfer, and what the workload dirties
   * meanwhile is what would be left. Rounds go on while each leaves at most two thirds of it (a
   * geometric series: from 16 MiB to 1 MiB in at most 7 rounds).
   */
  private settleRound(pending: number): string | undefined {
    const c = this.config;
    if (!(c.frozenBudgetMs > 0) || pending <= c.settleBytes || this.dirtyRate === null || !(this.lastBytes > 0) || this.rounds >= c.maxRounds) return undefined;
    const transferMs = Math.max(this.lastSendMs, 1) * (pending / this.lastBytes);
    if (transferMs <= c.frozenBudgetMs) return undefined;
    const roundMs = this.lastScanMs + transferMs;
    const left = this.dirtyRate * (roundMs / 1000);
    if (left > (pending * 2) / 3) return undefined;
    const mib = (b: number) => `${(b / 1048576).toFixed(1)} MiB`;
    const rate = fmtRate((this.lastBytes / Math.max(this.lastSendMs, 1)) * 1000);
    return `${mib(pending)} would take the frozen round ~${fmtMs(transferMs)} at the last round's ${rate} (budget ${c.frozenBudgetMs} ms): ` +
      `one more live round (~${fmtMs(roundMs)}) leaves ~${mib(left)}`;
  }
}
