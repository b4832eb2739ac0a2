// The compact layouts the memory layer hands around, and helpers over them.
//
//  - dirty ranges: BigUint64Array of [start, end, flags] triples, ascending,
//    page-aligned, flags = RANGE_* below;
//  - plain ranges: BigUint64Array of [start, end) pairs.
// One typed array per round instead of an object per page: 1 GiB all dirty
// in one range is 24 bytes.
import { PAGE_SIZE } from '../util/page-size';

export { PAGE_SIZE };

/** Pages in RAM: read them. */
export const RANGE_PRESENT = 1;
/** Pages in swap: read them (reading swaps them in). */
export const RANGE_SWAPPED = 2;
/** No page (never populated, MADV_DONTNEED'd, zapped): zeros for anonymous
 *  memory, backing-file content for file mappings. Send as a flag, not data. */
export const RANGE_ZERO = 4;

export const VMA_READ = 1;
export const VMA_WRITE = 2;
export const VMA_EXEC = 4;
/** MAP_SHARED: another process may write it unseen by this process' tracker. */
export const VMA_SHARED = 8;
export const VMA_FILE = 16;
/** [vdso], [vvar], [vvar_vclock], [vsyscall], [uprobes]: never tracked. */
export const VMA_SPECIAL = 32;
export const VMA_TRACKED = 64;

export interface Range {
  start: bigint;
  end: bigint;
  flags: number;
}

/** Iterates [start, end, flags] triples. */
export function* triples(ranges: BigUint64Array): Generator<Range> {
  for (let i = 0; i + 2 < ranges.length; i += 3) yield { start: ranges[i], end: ranges[i + 1], flags: Number(ranges[i + 2]) };
}

/** Iterates [start, end) pairs. */
export function* pairs(ranges: BigUint64Array): Generator<[bigint, bigint]> {
  for (let i = 0; i + 1 < ranges.length; i += 2) yield [ranges[i], ranges[i + 1]];
}

/** Pages covered by triples (stride 3) or pairs (stride 2). */
export function countPages(ranges: BigUint64Array, stride: 2 | 3): number {
  let n = 0n;
  for (let i = 0; i + 1 < ranges.length; i += stride) n += ranges[i + 1] - ranges[i];
  return Number(n / BigInt(PAGE_SIZE));
}

/** Bytes covered by [start, end) pairs. */
export function pairBytes(ranges: BigUint64Array): number {
  let n = 0n;
  for (let i = 0; i + 1 < ranges.length; i += 2) n += ranges[i + 1] - ranges[i];
  return Number(n);
}

/** The [start, end) pairs of the triples whose flags intersect `mask`
 *  (default: the ranges that carry data, i.e. not RANGE_ZERO). */
export function selectPairs(ranges: BigUint64Array, mask = RANGE_PRESENT | RANGE_SWAPPED): BigUint64Array {
  const out: bigint[] = [];
  for (let i = 0; i + 2 < ranges.length; i += 3) {
    if (!(Number(ranges[i + 2]) & mask)) continue;
    const n = out.length;
    if (n >= 2 && out[n - 1] === ranges[i]) out[n - 1] = ranges[i + 1];
    else out.push(ranges[i], ranges[i + 1]);
  }
  return BigUint64Array.from(out);
}

/** Splits pairs into batches of at most `maxBytes` each (page-aligned cuts),
 *  so a caller can read a huge dirty set through a bounded buffer. */
export function* batches(ranges: BigUint64Array, maxBytes: number): Generator<BigUint64Array> {
  const cap = BigInt(Math.max(PAGE_SIZE, Math.floor(maxBytes / PAGE_SIZE) * PAGE_SIZE));
  let cur: bigint[] = [];
  let used = 0n;
  for (let i = 0; i + 1 < ranges.length; i += 2) {
    let s = ranges[i];
    const e = ranges[i + 1];
    while (s < e) {
      const take = e - s < cap - used ? e - s : cap - used;
      cur.push(s, s + take);
      used += take;
      s += take;
      if (used === cap) {
        yield BigUint64Array.from(cur);
        cur = [];
        used = 0n;
      }
    }
  }
  if (cur.length) yield BigUint64Array.from(cur);
}
