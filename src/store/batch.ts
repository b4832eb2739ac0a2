// Validation of page batches and layouts. They come from the network: every
// field is checked before the store touches its state, and every failure is a
// one-line PhaulError('protocol').
import { PhaulError } from '../errors';
import { PAGE_SIZE } from './pagemap-image';

/** x86-64 user space with 4-level paging ends at 2^47. */
export const USER_ADDR_LIMIT = 2 ** 47;
export const MAX_PAGE = USER_ADDR_LIMIT / PAGE_SIZE;
/** PID_MAX_LIMIT. */
export const MAX_PID = 1 << 22;
/** Rounds are stored as round+1 in a Uint32Array (0 = never received). */
export const MAX_ROUND = 0xfffffffe;

export interface PageRange {
  /** Page-aligned address in the process (number or bigint). */
  vaddr: number | bigint;
  nrPages: number;
  /** All zeros: no data follows for this range. */
  zero?: boolean;
}

export interface PageBatch {
  /** The process, as the store was told its layout (see docs/IMAGES.md for which pid). */
  pid: number;
  round: number;
  ranges: readonly PageRange[];
  /** The non-zero ranges' bytes, concatenated in order. */
  data: Uint8Array;
}

/** A batch whose data has not been read yet: it is still on its data connection (PageStore.receive). */
export interface IncomingBatch {
  pid: number;
  round: number;
  ranges: readonly PageRange[];
  /** Length of the data that follows on the connection. */
  dataBytes: number;
}

export interface LayoutRange {
  vaddr: number | bigint;
  nrPages: number;
}

/** A validated range, in page numbers (vaddr / 4096). dataOff: byte offset in the batch's data, -1 for zero ranges. */
export interface Run {
  page: number;
  n: number;
  dataOff: number;
}

const hex = (page: number) => `0x${(page * PAGE_SIZE).toString(16)}`;

function protocol(msg: string): PhaulError {
  return new PhaulError('protocol', msg);
}

export function checkPid(pid: unknown, what: string): number {
  if (typeof pid !== 'number' || !Number.isInteger(pid) || pid < 1 || pid > MAX_PID) throw protocol(`${what}: pid ${String(pid).slice(0, 40)} is not a process id`);
  return pid;
}

/** vaddr as a page number; throws unless page-aligned and below the user address limit. */
function pageOf(v: unknown, what: string): number {
  let n: number;
  if (typeof v === 'bigint') {
    if (v < 0n || v >= BigInt(USER_ADDR_LIMIT)) throw protocol(`${what}: vaddr 0x${v.toString(16).slice(0, 20)} is outside user space`);
    n = Number(v);
  } else if (typeof v === 'number' && Number.isSafeInteger(v)) {
    if (v < 0 || v >= USER_ADDR_LIMIT) throw protocol(`${what}: vaddr ${v} is outside user space`);
    n = v;
  } else {
    throw protocol(`${what}: vaddr is not an integer`);
  }
  if (n % PAGE_SIZE) throw protocol(`${what}: vaddr 0x${n.toString(16)} is not page-aligned`);
  return n / PAGE_SIZE;
}

function countOf(v: unknown, page: number, what: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) throw protocol(`${what}: nrPages ${String(v).slice(0, 40)} is not a positive integer`);
  if (page + v > MAX_PAGE) throw protocol(`${what}: ${v} pages at ${hex(page)} run past user space`);
  return v;
}

/**
 * Checks a batch and returns its ranges as runs with data offsets. Checks
 * structure only; whether the pages lie in the layout is the store's business.
 */
export function validateBatch(b: PageBatch | IncomingBatch, maxRanges: number): Run[] {
  if (!b || typeof b !== 'object') throw protocol('page batch is not an object');
  const pid = checkPid(b.pid, 'page batch');
  const what = `page batch for pid ${pid}`;
  if (typeof b.round !== 'number' || !Number.isInteger(b.round) || b.round < 0 || b.round > MAX_ROUND) throw protocol(`${what}: round ${String(b.round).slice(0, 40)} is not a round number`);
  if (!Array.isArray(b.ranges)) throw protocol(`${what}: ranges is not an array`);
  if (b.ranges.length === 0) throw protocol(`${what}: no ranges`);
  if (b.ranges.length > maxRanges) throw protocol(`${what}: ${b.ranges.length} ranges, more than ${maxRanges}`);
  const dataBytes = 'data' in b ? (b.data instanceof Uint8Array ? b.data.length : -1) : b.dataBytes;
  if (!Number.isInteger(dataBytes) || dataBytes < 0) throw protocol(`${what}: data is not bytes`);
  const runs: Run[] = new Array(b.ranges.length);
  let off = 0;
  for (let i = 0; i < b.ranges.length; i++) {
    const r = b.ranges[i];
    const w = `${what}, range ${i}`;
    if (!r || typeof r !== 'object') throw protocol(`${w}: not an object`);
    const page = pageOf(r.vaddr, w);
    const n = countOf(r.nrPages, page, w);
    if (r.zero !== undefined && typeof r.zero !== 'boolean') throw protocol(`${w}: zero is not a boolean`);
    if (r.zero) {
      runs[i] = { page, n, dataOff: -1 };
    } else {
      runs[i] = { page, n, dataOff: off };
      off += n * PAGE_SIZE;
      // Checked as we go so a huge nrPages cannot make off overflow 2^53.
      if (off > dataBytes) throw protocol(`${what}: ranges need more than the ${dataBytes} data bytes sent`);
    }
  }
  if (off !== dataBytes) throw protocol(`${what}: ranges need ${off} data bytes, ${dataBytes} sent`);
  return runs;
}

/**
 * Checks a layout and returns it sorted, overlapping and touching ranges
 * merged, as [startPage, endPage) pairs.
 */
export function normalizeLayout(pid: number, ranges: readonly LayoutRange[], maxRanges: number): Array<[number, number]> {
  const what = `layout for pid ${pid}`;
  if (!Array.isArray(ranges)) throw protocol(`${what}: ranges is not an array`);
  if (ranges.length > maxRanges) throw protocol(`${what}: ${ranges.length} ranges, more than ${maxRanges}`);
  const out: Array<[number, number]> = [];
  for (let i = 0; i < ranges.length; i++) {
    const r = ranges[i];
    const w = `${what}, range ${i}`;
    if (!r || typeof r !== 'object') throw protocol(`${w}: not an object`);
    const page = pageOf(r.vaddr, w);
    out.push([page, page + countOf(r.nrPages, page, w)]);
  }
  out.sort((a, b) => a[0] - b[0]);
  const merged: Array<[number, number]> = [];
  for (const r of out) {
    const last = merged[merged.length - 1];
    if (last && r[0] <= last[1]) last[1] = Math.max(last[1], r[1]);
    else merged.push([r[0], r[1]]);
  }
  return merged;
}

export { hex as pageHex };
