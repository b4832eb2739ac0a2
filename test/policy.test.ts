// Switchover policy: replays recorded round traces (test/fixtures/traces) and
// checks each decision and its reason, then property checks over random traces.
// Pure: no processes, no sockets.
//
// Run alone:  node --test dist/test/policy.test.js
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';

import { PhaulError } from '../src/errors';
import { expectedDowntimeMs, SwitchoverPolicy, type RoundStats, type SwitchoverConfig, type SwitchoverDecision } from '../src/policy/switchover';

const TRACES = path.join(__dirname, '..', '..', 'test', 'fixtures', 'traces');
const PAGE = 4096;

interface TraceRound extends RoundStats {
  decide: { sinceLastScanMs: number };
  expect: { action: string; throttlePct: number; reason: string };
}
interface Trace { description: string; config: SwitchoverConfig; fixedCostMs: number; rounds: TraceRound[] }

function load(name: string): Trace {
  return JSON.parse(fs.readFileSync(path.join(TRACES, `${name}.json`), 'utf8')) as Trace;
}

/** Records each round and decides, as the orchestrator does; stops at the first switchover. */
function replay(t: Trace, config: SwitchoverConfig = t.config, fixedCostMs = t.fixedCostMs): SwitchoverDecision[] {
  const p = new SwitchoverPolicy(config);
  const out: SwitchoverDecision[] = [];
  for (const r of t.rounds) {
    const { decide, expect: _, ...stats } = r;
    p.record(stats);
    const d = p.decide({ fixedCostMs, sinceLastScanMs: decide.sinceLastScanMs });
    out.push(d);
    if (d.action === 'switchover') break;
  }
  return out;
}

/** Every decision matches the one the trace recorded, and the last one is the switchover. */
function checkTrace(name: string): SwitchoverDecision[] {
  const t = load(name);
  const ds = replay(t);
  assert.equal(ds.length, t.rounds.length, `${name}: switched over after ${ds.length} of ${t.rounds.length} rounds`);
  ds.forEach((d, i) => {
    const e = t.rounds[i].expect;
    assert.equal(d.action, e.action, `${name} round ${i}: ${d.reason}`);
    assert.equal(d.throttlePct, e.throttlePct, `${name} round ${i}`);
    assert.match(d.reason, new RegExp(e.reason), `${name} round ${i}`);
    // The formula, with the last scan counted in the fixed part.
    const fixed = t.fixedCostMs + t.rounds[i].scanMs;
    assert.ok(Math.abs(d.expectedDowntimeMs - (d.pendingBytes / d.bandwidthBps) * 1000 - fixed) < 1e-6, `${name} round ${i} formula`);
  });
  assert.equal(ds[ds.length - 1].action, 'switchover');
  return ds;
}

const MBps = 1e6;

test('idle workload: full copy, then switches over after round 1', () => {
  const ds = checkTrace('idle');
  assert.equal(ds.length, 2);
  // Round 0 alone cannot tell a dirty rate: it assumes all 256 MiB pending.
  assert.equal(ds[0].pendingBytes, 65536 * PAGE);
  assert.match(ds[0].reason, /no dirty-rate sample yet: assuming all 256\.0 MiB/);
  assert.ok(ds[0].expectedDowntimeMs > 2000);
  // 3 pages in 2.3 s: nothing pending to speak of, the downtime is the fixed part.
  assert.ok(ds[1].pendingBytes < PAGE, `pending ${ds[1].pendingBytes}`);
  assert.ok(ds[1].expectedDowntimeMs >= 122 && ds[1].expectedDowntimeMs < 123, `${ds[1].expectedDowntimeMs}`);
  assert.ok(Math.abs(ds[1].bandwidthBps - 117e6) < 0.5e6, `bw ${ds[1].bandwidthBps}`);
});

test('20 MB/s writer on 1 Gbit/s converges in a few rounds', () => {
  const ds = checkTrace('writer-20mbs');
  assert.deepEqual(ds.map((d) => d.action), ['continue', 'continue', 'switchover']);
  // Round 1's sample spans the 9 s full copy and under-reports (pages rewritten
  // count once); round 2's is close to the 20 MB/s written.
  assert.ok(ds[1].dirtyRateBps > 17 * MBps && ds[1].dirtyRateBps < 20 * MBps, `${ds[1].dirtyRateBps}`);
  assert.ok(ds[2].dirtyRateBps > 19 * MBps && ds[2].dirtyRateBps <= 20 * MBps, `${ds[2].dirtyRateBps}`);
  assert.ok(ds[1].expectedDowntimeMs > 300 && ds[2].expectedDowntimeMs <= 300);
  for (const d of ds) assert.ok(Math.abs(d.bandwidthBps - 117e6) < 0.5e6, `bw ${d.bandwidthBps}`);
});

test('writer faster than the link: throttle steps 20, 30, 40 ... every second round, then converges', () => {
  const ds = checkTrace('fast-writer');
  const steps = ds.filter((d) => d.action === 'throttle').map((d) => d.throttlePct);
  assert.deepEqual(steps, [20, 30, 40, 50, 60, 70, 80]);
  // QEMU's rule: two rounds without progress per step (the first sample after
  // a step was mostly dirtied before it).
  const at = ds.flatMap((d, i) => (d.action === 'throttle' ? [i] : []));
  assert.deepEqual(at, [2, 4, 6, 8, 10, 12, 14]);
  for (const i of at) assert.match(ds[i].reason, /not converging: dirty rate [\d.]+ MB\/s > 50% of bandwidth [\d.]+ MB\/s for 2 rounds/);
  const last = ds[ds.length - 1];
  assert.equal(last.throttlePct, 80);
  assert.match(last.reason, /<= limit 300 ms/);
});

test('writer faster than the link: switchover at maxRounds with the steps so far', () => {
  const t = load('fast-writer');
  // The trace up to round 7 does not depend on maxRounds (the decisions before agree).
  const ds = replay(t, { ...t.config, maxRounds: 8 });
  assert.equal(ds.length, 8);
  assert.deepEqual(ds.map((d) => d.action), ['continue', 'continue', 'throttle', 'continue', 'throttle', 'continue', 'throttle', 'switchover']);
  assert.deepEqual(ds.filter((d) => d.action === 'throttle').map((d) => d.throttlePct), [20, 30, 40]);
  assert.match(ds[7].reason, /^reached maxRounds \(8\) with expected downtime \d+ ms over the 300 ms limit$/);
  assert.ok(ds[7].expectedDowntimeMs > 300);
});

test('writer faster than the link without auto-converge: switches over when not converging', () => {
  const t = load('fast-writer');
  const ds = replay(t, { autoConverge: false });
  assert.deepEqual(ds.map((d) => d.action), ['continue', 'continue', 'switchover']);
  assert.match(ds[2].reason, /^not converging: .* for 2 rounds; switching over with expected downtime \d+ ms$/);
  assert.equal(ds[2].throttlePct, 0);
  // Same with auto-converge on but told to switch over.
  const ds2 = replay(t, { autoConverge: true, onNoConvergence: 'switchover' });
  assert.deepEqual(ds2.map((d) => d.action), ['continue', 'continue', 'switchover']);
});

test('tiny workload switches over right after the first round', () => {
  const ds = checkTrace('tiny');
  assert.equal(ds.length, 1);
  // No dirty rate known: all 40 pages assumed pending, and that still fits.
  assert.equal(ds[0].pendingBytes, 40 * PAGE);
  // 164 KiB in 3 ms is too small to measure: the round's own speed is a lower bound.
  assert.ok(Math.abs(ds[0].bandwidthBps - 164480 / 0.003) < 1, `${ds[0].bandwidthBps}`);
  assert.ok(ds[0].expectedDowntimeMs < 105);
});

test('bandwidth cap is honored', () => {
  const ds = checkTrace('bandwidth-cap');
  // The shaper let 40.6 MB/s through; every estimate uses the 40 MB/s cap.
  for (const d of ds) assert.equal(d.bandwidthBps, 40e6);
  assert.equal(ds.length, 6);
  // The same 20 MB/s writer that converges at 1 Gbit/s does not under a 10 MB/s cap.
  const t = load('writer-20mbs');
  const capped = replay(t, { maxBandwidthBps: 10e6 });
  for (const d of capped) assert.equal(d.bandwidthBps, 10e6);
  assert.deepEqual(capped.map((d) => d.action), ['continue', 'continue', 'switchover']);
  assert.match(capped[2].reason, /^not converging: dirty rate 19\.7 MB\/s > 50% of bandwidth 10\.0 MB\/s/);
  assert.ok(capped[2].expectedDowntimeMs > 600);
});

test('throttle stops at its maximum, then maxRounds switches over', () => {
  // A writer the throttle does not slow (say, memory shared with a writer outside the tree).
  const p = new SwitchoverPolicy({ autoConverge: true });
  const actions: string[] = [];
  const pcts: number[] = [];
  for (let r = 0; r < 30; r++) {
    // 100 MB/s link, 200 MB/s dirtied: 800 ms rounds of 80 MB.
    p.record({ round: r, pages: 20000, bytes: 80e6, ms: 805, scanMs: 5, dirtyPagesFound: 39063, sinceLastScanMs: r ? 800 : 0 });
    const d = p.decide();
    actions.push(d.action);
    if (d.action === 'throttle') pcts.push(d.throttlePct);
    if (r === 25) assert.match(d.reason, /throttle already at its maximum 99%$/);
    if (r === 29) assert.match(d.reason, /^reached maxRounds \(30\)/);
  }
  assert.deepEqual(pcts, [20, 30, 40, 50, 60, 70, 80, 90, 99]);
  assert.equal(actions[29], 'switchover');
  assert.ok(actions.slice(0, 29).every((a) => a !== 'switchover'));
  assert.equal(p.throttlePct, 99);
});

test('a throttle step counts only once the caller acted on it (the next record)', () => {
  const p = new SwitchoverPolicy({ autoConverge: true });
  const round = (r: number) => p.record({ round: r, pages: 20000, bytes: 80e6, ms: 805, scanMs: 5, dirtyPagesFound: 39063, sinceLastScanMs: r ? 800 : 0 });
  round(0); p.decide(); round(1); p.decide(); round(2);
  const a = p.decide();
  const b = p.decide();
  assert.equal(a.action, 'throttle');
  assert.deepEqual(b, a); // asking again does not step twice
  assert.equal(p.throttlePct, 0);
  round(3);
  assert.equal(p.throttlePct, 20);
  assert.equal(p.decide().action, 'continue'); // a fresh count of rounds without progress
});

test('bandwidth estimate ignores rounds too small to measure', () => {
  const p = new SwitchoverPolicy();
  p.record({ round: 0, pages: 25000, bytes: 100e6, ms: 1005, scanMs: 5, dirtyPagesFound: 25000 });
  assert.equal(p.bandwidthBps, 100e6);
  // 40 KB in 10 ms: latency-bound (4 MB/s apparent), not the link.
  p.record({ round: 1, pages: 10, bytes: 40e3, ms: 11, scanMs: 1, dirtyPagesFound: 10, sinceLastScanMs: 1000 });
  assert.equal(p.bandwidthBps, 100e6);
  // A measurable round at 50 MB/s moves it, weighted by size: (0.5*100 MB + 50 MB) / (0.5 s + 1 s).
  p.record({ round: 2, pages: 12207, bytes: 50e6, ms: 1001, scanMs: 1, dirtyPagesFound: 12207, sinceLastScanMs: 11 });
  assert.ok(Math.abs(p.bandwidthBps - 100e6 / 1.5) < 1, `${p.bandwidthBps}`);
});

test('fixed cost above the limit: switches over once the transfer part is small, and says why', () => {
  // 837 ms: the lead's cost model for restoring a 1 GiB tree; the 300 ms limit cannot be met.
  const t = load('idle');
  const ds = replay(t, t.config, 837);
  assert.deepEqual(ds.map((d) => d.action), ['continue', 'switchover']);
  assert.match(ds[1].reason, /^fixed part 839 ms \(switchover cost \+ scan\) alone exceeds the 300 ms limit; pending transfer 0 ms <= 30 ms/);
  // And a large pending set still waits for more rounds.
  const p = new SwitchoverPolicy({ fixedCostMs: 837 });
  p.record({ round: 0, pages: 262144, bytes: 1.07e9, ms: 9010, scanMs: 10, dirtyPagesFound: 262144 });
  p.record({ round: 1, pages: 5000, bytes: 20.5e6, ms: 180, scanMs: 5, dirtyPagesFound: 5000, sinceLastScanMs: 9000 });
  assert.equal(p.decide({ pendingPages: 5000 }).action, 'continue'); // 20 MB at ~119 MB/s: 172 ms > 30 ms
  assert.equal(p.decide({ pendingPages: 500 }).action, 'switchover'); // 2 MB: 17 ms
});

test('decide(): before any round, setFixedCostMs, pendingPages', () => {
  const p = new SwitchoverPolicy({ fixedCostMs: 50 });
  const d0 = p.decide();
  assert.equal(d0.action, 'continue');
  assert.match(d0.reason, /no round recorded yet/);
  p.record({ round: 0, pages: 25000, bytes: 100e6, ms: 1005, scanMs: 5, dirtyPagesFound: 25000 });
  p.record({ round: 1, pages: 2500, bytes: 10e6, ms: 105, scanMs: 5, dirtyPagesFound: 2500, sinceLastScanMs: 1000 });
  // Default: pending dirtied during the last round's send (100 ms at ~10 MB/s = 1 MB).
  const d = p.decide();
  assert.equal(d.pendingBytes, Math.round(2500 * PAGE * 0.1));
  assert.equal(p.decide({ pendingPages: 100 }).pendingBytes, 100 * PAGE);
  p.setFixedCostMs(400);
  const late = p.decide();
  assert.equal(late.action, 'switchover'); // 10 ms of transfer on top of a fixed part that alone exceeds the limit
  assert.match(late.reason, /alone exceeds/);
  assert.ok(Math.abs(late.expectedDowntimeMs - d.expectedDowntimeMs - 350) < 1e-9);
  // decide() can carry the update too; it sticks.
  p.decide({ fixedCostMs: 10 });
  assert.equal(p.fixedCostMs, 10);
});

test('bad config and bad rounds are refused', () => {
  const usage = (c: SwitchoverConfig) => assert.throws(() => new SwitchoverPolicy(c), (e: unknown) => e instanceof PhaulError && e.code === 'usage');
  usage({ downtimeLimitMs: 0 });
  usage({ maxRounds: 0 });
  usage({ maxRounds: 2.5 });
  usage({ maxBandwidthBps: -1 });
  usage({ throttleMaxPct: 100 });
  usage({ autoConverge: true, throttleInitialPct: 50, throttleMaxPct: 40 });
  usage({ onNoConvergence: 'throttle' }); // throttling needs autoConverge
  usage({ onNoConvergence: 'postcopy' as 'throttle', autoConverge: true });
  assert.equal(new SwitchoverPolicy({ autoConverge: true }).config.onNoConvergence, 'throttle');
  assert.equal(new SwitchoverPolicy().config.onNoConvergence, 'switchover');
  const p = new SwitchoverPolicy();
  p.record({ round: 3, pages: 1, bytes: 4096, ms: 1, scanMs: 0, dirtyPagesFound: 1 });
  assert.throws(() => p.record({ round: 3, pages: 1, bytes: 4096, ms: 1, scanMs: 0, dirtyPagesFound: 1 }), /recorded after round 3/);
  assert.throws(() => p.record({ round: 4, pages: -1, bytes: 4096, ms: 1, scanMs: 0, dirtyPagesFound: 1 }), /pages must be/);
  assert.throws(() => p.record({ round: 4, pages: 1, bytes: NaN, ms: 1, scanMs: 0, dirtyPagesFound: 1 }), /bytes must be/);
  assert.throws(() => p.record({ round: 4, pages: 1, bytes: 1, ms: 1, scanMs: 2, dirtyPagesFound: 1 }), /includes the scan/);
  assert.throws(() => p.decide({ sinceLastScanMs: -1 }), /sinceLastScanMs/);
});

// ---------------------------------------------------------------- properties
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0; // mulberry32
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test('properties over random traces', () => {
  const rand = rng(20240601);
  const pick = <T>(xs: T[]) => xs[Math.floor(rand() * xs.length)];
  let switched = 0;
  for (let n = 0; n < 300; n++) {
    const autoConverge = rand() < 0.5;
    const config: SwitchoverConfig = {
      maxRounds: 1 + Math.floor(rand() * 12),
      autoConverge,
      downtimeLimitMs: pick([50, 300, 1000]),
      maxBandwidthBps: rand() < 0.3 ? pick([5e6, 50e6, 500e6]) : undefined,
      fixedCostMs: pick([0, 60, 250, 900]),
    };
    const p = new SwitchoverPolicy(config);
    const linkBps = pick([1e6, 12e6, 117e6, 1.17e9]);
    const rateBps = pick([0, 1e5, 5e6, 40e6, 200e6, 2e9]);
    let lastPct = 0;
    for (let r = 0; r < 16; r++) {
      const pages = Math.floor(rand() * 300000);
      const bytes = pages * 4112;
      const sendMs = Math.round((bytes / linkBps) * 1000 + rand() * 3);
      const scanMs = Math.floor(rand() * 40);
      const since = r === 0 ? 0 : Math.round(sendMs + rand() * 2) || 1;
      p.record({ round: r, pages, bytes, ms: sendMs + scanMs, scanMs, dirtyPagesFound: r === 0 ? pages : Math.round(((rateBps * since) / 1000) / PAGE), sinceLastScanMs: since });

      // Expected downtime never falls as the time since the scan (so the pending set) grows.
      let prev = -Infinity;
      let prevPending = -Infinity;
      for (const s of [0, 1, 10, 100, 1000, 10_000, 100_000]) {
        const d = p.decide({ sinceLastScanMs: s });
        assert.ok(d.pendingBytes >= prevPending && d.expectedDowntimeMs >= prev, `monotonic at ${s} ms`);
        prev = d.expectedDowntimeMs;
        prevPending = d.pendingBytes;
      }
      const d = p.decide();
      if (config.maxBandwidthBps) assert.ok(d.bandwidthBps <= config.maxBandwidthBps);
      assert.ok(d.throttlePct >= lastPct && d.throttlePct <= 99);
      if (d.throttlePct > 0) assert.ok(autoConverge);
      if (/<= limit/.test(d.reason)) assert.ok(d.expectedDowntimeMs <= config.downtimeLimitMs!);
      // Never anything but switchover once maxRounds rounds are done.
      if (r + 1 >= config.maxRounds!) {
        assert.equal(d.action, 'switchover', `round ${r} of max ${config.maxRounds}: ${d.reason}`);
        switched++;
        break;
      }
      if (d.action === 'switchover') { switched++; break; }
      lastPct = d.throttlePct;
    }
  }
  assert.equal(switched, 300);
});

test('expectedDowntimeMs is monotonic in pending bytes', () => {
  const rand = rng(7);
  for (let i = 0; i < 1000; i++) {
    const bw = rand() < 0.05 ? 0 : rand() * 2e9;
    const fixed = rand() * 500;
    const a = rand() * 1e9;
    const b = a + rand() * 1e8;
    assert.ok(expectedDowntimeMs(b, bw, fixed) >= expectedDowntimeMs(a, bw, fixed));
  }
  assert.equal(expectedDowntimeMs(0, 0, 120), 120);
  assert.equal(expectedDowntimeMs(1, 0, 120), Infinity);
  assert.equal(expectedDowntimeMs(117e6, 117e6, 120), 1120);
});

test('frozenBudgetMs: one more live round while the frozen round would overrun its budget and a round leaves at most two thirds', () => {
  const MiB = 1 << 20;
  // Round 0: all of 256 MiB in 300 ms; round 1: 4000 pages dirtied over the 400 ms since,
  // sent and stored in 40 ms (~410 MB/s) after a 5 ms scan.
  const rounds: RoundStats[] = [
    { round: 0, pages: 65536, bytes: 256 * MiB, ms: 310, scanMs: 10, dirtyPagesFound: 65536 },
    { round: 1, pages: 4000, bytes: 4000 * PAGE, ms: 45, scanMs: 5, dirtyPagesFound: 4000, sinceLastScanMs: 400 },
  ];
  const policy = (config: SwitchoverConfig) => {
    const p = new SwitchoverPolicy({ fixedCostMs: 100, ...config });
    for (const r of rounds) p.record(r);
    return p;
  };
  // Off by default: the limit alone decides.
  assert.equal(policy({}).decide({ sinceLastScanMs: 45 }).action, 'switchover');
  // 45 ms at ~41 MB/s leave ~1.8 MiB: ~4.6 ms at the last round's rate, within a 20 ms budget.
  assert.equal(policy({ frozenBudgetMs: 20 }).decide({ sinceLastScanMs: 45 }).action, 'switchover');
  // Over a 2 ms budget: a round (5 ms scan + 4.6 ms) would leave ~0.4 MiB.
  const p = policy({ frozenBudgetMs: 2 });
  const d = p.decide({ sinceLastScanMs: 45 });
  assert.equal(d.action, 'continue', d.reason);
  assert.match(d.reason, /fits the limit, but 1\.8 MiB would take the frozen round ~5 ms at the last round's 409\.6 MB\/s \(budget 2 ms\): one more live round \(~10 ms\) leaves ~0\.4 MiB/);
  // That round: 95 pages in 10 ms; what is left (~0.4 MiB) fits the budget: switch over.
  p.record({ round: 2, pages: 95, bytes: 95 * PAGE, ms: 10, scanMs: 5, dirtyPagesFound: 95, sinceLastScanMs: 45 });
  const d2 = p.decide({ sinceLastScanMs: 10 });
  assert.equal(d2.action, 'switchover', d2.reason);
  assert.ok(d2.pendingBytes < MiB);
  // The rate is the last round's, not the first's: at ~100 MB/s (scattered pages under load) the
  // same 1.8 MiB would take ~18 ms, over a 10 ms budget; a round (3 ms scan) would leave ~0.9 MiB.
  const slowRate = new SwitchoverPolicy({ fixedCostMs: 100, frozenBudgetMs: 10 });
  slowRate.record(rounds[0]);
  slowRate.record({ round: 1, pages: 400, bytes: 400 * PAGE, ms: 19, scanMs: 3, dirtyPagesFound: 4000, sinceLastScanMs: 400 });
  const d4 = slowRate.decide({ sinceLastScanMs: 45 });
  assert.equal(d4.action, 'continue', d4.reason);
  assert.match(d4.reason, /1\.8 MiB would take the frozen round ~18 ms at the last round's 102\.4 MB\/s/);
  // The last round's store lag, learnt later (pipelined rounds), counts in its rate: 4.6 ms of
  // transfer become ~16 ms with a 100 ms lag on its 40 ms, over a 10 ms budget.
  const lagged = policy({ frozenBudgetMs: 10 });
  assert.equal(lagged.decide({ sinceLastScanMs: 45 }).action, 'switchover');
  lagged.noteStoreLag(100);
  const d5 = lagged.decide({ sinceLastScanMs: 45 });
  assert.equal(d5.action, 'continue', d5.reason);
  assert.match(d5.reason, /would take the frozen round ~16 ms at the last round's 117\.0 MB\/s/);
  assert.equal(lagged.bandwidthBps, policy({}).bandwidthBps, 'the bandwidth estimate keeps what was recorded');
  assert.throws(() => lagged.noteStoreLag(-1), /store lag/);
  // Nothing at or under settleBytes asks for a round, whatever the rate.
  assert.equal(policy({ frozenBudgetMs: 2, settleBytes: 2 * MiB }).decide({ sinceLastScanMs: 45 }).action, 'switchover');

  // A round that would leave more than two thirds (sending is as slow as the writer): switch over at once.
  const slow = new SwitchoverPolicy({ fixedCostMs: 100, frozenBudgetMs: 20 });
  slow.record(rounds[0]);
  slow.record({ round: 1, pages: 4000, bytes: 4000 * PAGE, ms: 400, scanMs: 5, dirtyPagesFound: 4000, sinceLastScanMs: 400 });
  const d3 = slow.decide({ sinceLastScanMs: 400 });
  assert.equal(d3.action, 'switchover', d3.reason);
  assert.ok(d3.pendingBytes > 8 * MiB);
  // Nor past maxRounds.
  assert.equal(policy({ frozenBudgetMs: 2, maxRounds: 2 }).decide({ sinceLastScanMs: 45 }).action, 'switchover');
  assert.throws(() => new SwitchoverPolicy({ frozenBudgetMs: -1 }), /frozenBudgetMs/);
  assert.throws(() => new SwitchoverPolicy({ settleBytes: -1 }), /settleBytes/);
});
