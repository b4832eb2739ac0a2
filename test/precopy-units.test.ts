// Pure parts of the pre-copy sender: what gets announced to the store (and
// in how many messages), and which not-present pages are sent as zeros.
// Both once caused lost pages. The control connection is a stand-in.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { anonZeroPairs, batchesPerCall, KnownRanges, PrecopySender } from '../src/agent/precopy';
import type { FrameConn } from '../src/protocol/frames';
import type { Message } from '../src/protocol/messages';
import { RANGE_PRESENT, RANGE_ZERO, VMA_FILE, VMA_SHARED, VMA_TRACKED } from '../src/memory/ranges';

const P = 0x1000n;

test('layout announcements never cover a page twice, even when one request overlaps itself', () => {
  const k = new KnownRanges();
  // A VMA and a data range spanning it and its neighbour: overlapping wants in one call.
  const first = k.add(1, [[0x10n * P, 0x11n * P], [0x11n * P, 0x12n * P], [0x10n * P, 0x15n * P]]);
  assert.deepEqual(first, [[0x10n * P, 0x15n * P]]);
  // Later: partly known, partly new.
  assert.deepEqual(k.add(1, [[0x12n * P, 0x18n * P]]), [[0x15n * P, 0x18n * P]]);
  assert.deepEqual(k.add(1, [[0x10n * P, 0x18n * P]]), []);
  // Another pid is separate.
  assert.deepEqual(k.add(2, [[0x10n * P, 0x11n * P]]), [[0x10n * P, 0x11n * P]]);
  // Holes in between are filled exactly.
  k.add(3, [[0n, 2n * P], [4n * P, 6n * P]]);
  assert.deepEqual(k.add(3, [[0n, 8n * P]]), [[2n * P, 4n * P], [6n * P, 8n * P]]);
});

test('known-zero pages are taken only from private anonymous tracked mappings', () => {
  const T = BigInt(VMA_TRACKED);
  const vmas = BigUint64Array.from([
    0x100n * P, 0x110n * P, T,                          // anonymous, tracked
    0x200n * P, 0x210n * P, T | BigInt(VMA_FILE),       // private file mapping: not-present means file content
    0x300n * P, 0x310n * P, T | BigInt(VMA_SHARED),     // shared: not ours to zero
    0x400n * P, 0x410n * P, 0n,                         // untracked
  ]);
  const ranges = BigUint64Array.from([
    0x100n * P, 0x104n * P, BigInt(RANGE_PRESENT),
    0x104n * P, 0x110n * P, BigInt(RANGE_ZERO),
    0x200n * P, 0x210n * P, BigInt(RANGE_ZERO),
    0x300n * P, 0x310n * P, BigInt(RANGE_ZERO),
    0x400n * P, 0x410n * P, BigInt(RANGE_ZERO),
  ]);
  assert.deepEqual(anonZeroPairs(ranges, vmas), [0x104n * P, 0x110n * P]);
});

test('one layout message per round announces every process whose pages the round sends, each mapping once, and the processes gone', async () => {
  const sent: Message[] = [];
  const control = {
    closed: false,
    send: (m: Message) => { sent.push(m); },
    expect: async (t: string) => ({ t }),
  } as unknown as FrameConn;
  const s = new PrecopySender(control, [], {});
  try {
    const T = BigInt(VMA_TRACKED);
    const vmas = BigUint64Array.from([0x100n * P, 0x110n * P, T, 0x200n * P, 0x204n * P, T]);
    const present = (a: bigint, b: bigint) => BigUint64Array.from([a * P, b * P, BigInt(RANGE_PRESENT)]);
    s.plan(10, present(0x101n, 0x102n), vmas);
    s.plan(11, present(0x200n, 0x201n), vmas);
    // A process forked after the last scan: CRIU's ranges, no VMAs.
    s.plan(12, present(0x300n, 0x302n), new BigUint64Array(0));
    assert.equal(sent.length, 0, 'nothing before announce()');
    await s.announce();
    assert.deepEqual(sent, [{ t: 'layout', procs: [
      { pid: 10, ranges: [{ vaddr: 0x100 * 4096, nrPages: 0x10 }] },
      { pid: 11, ranges: [{ vaddr: 0x200 * 4096, nrPages: 4 }] },
      { pid: 12, ranges: [{ vaddr: 0x300 * 4096, nrPages: 2 }] },
    ] }]);
    // The next round: only what is new, still one message; none when nothing is.
    s.plan(10, present(0x101n, 0x103n), vmas);
    s.plan(11, present(0x108n, 0x109n), BigUint64Array.from([0x108n * P, 0x10an * P, T]));
    await s.announce();
    assert.deepEqual(sent.slice(1), [{ t: 'layout', procs: [{ pid: 11, ranges: [{ vaddr: 0x108 * 4096, nrPages: 2 }] }] }]);
    await s.announce();
    assert.equal(sent.length, 2);
    // A process that exited: the store forgets it; its pid number, back later, is announced afresh.
    s.forget(11);
    await s.announce();
    assert.deepEqual(sent[2], { t: 'layout', procs: [], gone: [11] });
    s.plan(11, present(0x200n, 0x201n), vmas);
    await s.announce();
    assert.deepEqual(sent[3], { t: 'layout', procs: [{ pid: 11, ranges: [{ vaddr: 0x200 * 4096, nrPages: 4 }] }] });
  } finally {
    s.close();
  }
});

test('batches per native call: single batches over every connection for a small round, up to 8 for a big one', () => {
  const MiB = 1 << 20;
  assert.equal(batchesPerCall(8 * MiB, 2), 1, 'the frozen round keeps both connections busy');
  assert.equal(batchesPerCall(4 * MiB, 4), 1);
  assert.equal(batchesPerCall(0, 2), 1);
  assert.equal(batchesPerCall(32 * MiB, 2), 2, 'each connection still gets two calls');
  assert.equal(batchesPerCall(1024 * MiB, 2), 8, 'at most 8 per call');
  assert.equal(batchesPerCall(1024 * MiB, 0), 8);
});
