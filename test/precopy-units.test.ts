// Pure parts of the pre-copy sender: what gets announced to the store, and
// which not-present pages are sent as zeros. Both once caused lost pages.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { anonZeroPairs, KnownRanges } from '../src/agent/precopy';
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
