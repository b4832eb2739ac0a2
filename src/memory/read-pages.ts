// readPages: copies pages of another process into a buffer with
// process_vm_readv (and /proc/PID/mem for pages a mapping's protection hides
// from it) on the libuv pool (the event loop never blocks).
import { fromNative } from './errors';
import { addon } from '../native';
import { pairBytes, PAGE_SIZE } from './ranges';

export interface ReadPagesOptions {
  /** Where to put the pages (back to back, in range order); allocated when absent. */
  buffer?: Uint8Array;
  /** Byte offset into `buffer`. */
  offset?: number;
  /** Also return a bitmap of all-zero pages (send those as flags, not data). */
  zeroMap?: boolean;
}

export interface ReadPagesResult {
  buffer: Uint8Array;
  /** Bytes laid into the buffer from `offset` (the total length of the ranges). */
  bytes: number;
  /** [start, end) pairs that could not be read (unmapped since the scan);
   *  their place in the buffer is zero-filled, but they are no copy of
   *  anything: never send them as zeros. PROT_NONE pages are read. */
  missing: BigUint64Array;
  /** Bit i (LSB first) set = page i of the buffer (from offset) is all zeros (never a missing page). */
  zeroMap: Uint8Array | null;
  /** With zeroMap, when any page is missing: bit i set = page i is missing. */
  missingMap: Uint8Array | null;
  zeroPages: number;
  /** Pages read through /proc/PID/mem, one at a time: those process_vm_readv could not read (PROT_NONE). */
  forcedPages: number;
  calls: number;
  ms: number;
}

/**
 * Reads `ranges` ([start, end) pairs, page-aligned) of process `pid`.
 * Do not touch `buffer` until the promise settles.
 */
export async function readPages(pid: number, ranges: BigUint64Array, opts: ReadPagesOptions = {}): Promise<ReadPagesResult> {
  const bytes = pairBytes(ranges);
  const offset = opts.offset ?? 0;
  const buffer = opts.buffer ?? Buffer.allocUnsafe(bytes);
  try {
    const r = await addon().readPages(pid, ranges, buffer, { offset, zeroMap: !!opts.zeroMap });
    return {
      buffer, bytes: r.bytes, missing: r.missing, zeroMap: r.zeroMap, missingMap: r.missingMap,
      zeroPages: r.zeroPages, forcedPages: r.forcedPages, calls: r.calls, ms: r.ns / 1e6,
    };
  } catch (e) {
    throw fromNative(e, pid);
  }
}

/** Is page i set in a zeroMap (or a missingMap)? */
export function isZeroPage(zeroMap: Uint8Array, i: number): boolean {
  return (zeroMap[i >> 3] & (1 << (i & 7))) !== 0;
}

export { PAGE_SIZE };
