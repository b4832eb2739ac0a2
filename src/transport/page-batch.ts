// The page-batch codec of pre-copy data connections: one PageBatch (store/batch.ts)
// per wire batch, optionally lz4-compressed. Both ends run it: the source
// encodes, the destination decodes (batch-stream.ts) and hands the result to
// PageStore.write() unchanged.
//
// Wire format, version 1, all integers little-endian. Fixed 32-byte header so
// the receiver learns every size, and checks every limit, before it buffers or
// allocates anything for the batch:
//
//   off size
//    0   4  magic   "PFPB" (0x42504650 read as u32 LE)
//    4   1  version 1
//    5   1  flags   bit0 LZ4: the payload is compressed; other bits must be 0
//    6   2  reserved, 0
//    8   4  pid     1..MAX_PID
//   12   4  round   0..MAX_ROUND
//   16   4  nranges 1..65536
//   20   4  rawLen  data bytes after decompression: 0..64 MiB, a multiple of 4096
//   24   4  payloadLen  bytes of payload on the wire
//   28   4  reserved, 0
//   32      nranges x 16 bytes:
//             u64 vaddr (page-aligned, vaddr + nrPages*4096 <= 2^47)
//             u32 nrPages (>= 1)
//             u32 flags  bit0 ZERO: all-zero pages, no data; other bits must be 0
//   ...     payload:
//             raw: payloadLen == rawLen, the non-zero ranges' pages in order
//             LZ4: lz4-napi's block format, i.e. u32 LE rawLen followed by one
//                  LZ4 block (lz4_flex compress_prepend_size);
//                  payloadLen <= 4 + rawLen + rawLen/255 + 16 (LZ4's bound)
//
// Decode checks, each a one-line PhaulError('protocol'); after one the stream is
// unusable (no resync marker on purpose: a desynchronised peer is a broken peer):
// magic, version, unknown flag bits, reserved != 0, pid/round range, nranges,
// rawLen cap and page multiple, payload length vs raw/bound, per range
// alignment/extent/nrPages, sum of non-zero pages * 4096 == rawLen, the LZ4
// size prefix == rawLen before decompressing (lz4_flex would otherwise allocate
// whatever the prefix says, up to 4 GiB), decompressed length == rawLen.
import { lz4 } from './lz4';
import { PhaulError } from '../errors';
import { MAX_PID, MAX_ROUND, USER_ADDR_LIMIT, type PageBatch, type PageRange } from '../store/batch';

export type { PageBatch, PageRange };

import { PAGE_SIZE } from '../util/page-size';

export { PAGE_SIZE };
export const BATCH_MAGIC = 0x42504650;
export const BATCH_VERSION = 1;
export const HEADER_SIZE = 32;
export const RANGE_SIZE = 16;
export const MAX_RANGES = 65536;
export const MAX_RAW_BYTES = 64 * 1024 * 1024;
export const FLAG_LZ4 = 1;
export const RANGE_ZERO = 1;
/** A compressed batch goes out only if it saves at least this share of the raw bytes (see encodeBatch). */
export const DEFAULT_MIN_SAVING = 0.1;

const EMPTY = Buffer.alloc(0);

/** LZ4's worst case for n input bytes (LZ4_COMPRESSBOUND), plus lz4-napi's 4-byte size prefix. */
export function lz4WireBound(n: number): number {
  return 4 + n + Math.floor(n / 255) + 16;
}

export interface EncodeOptions {
  compress: boolean;
  /** Send compressed only when it saves at least this share (default 0.1). */
  minSaving?: number;
}

/** The fixed header, as validated by parseHeader. */
export interface BatchHeader {
  lz4: boolean;
  pid: number;
  round: number;
  nranges: number;
  rawLen: number;
  payloadLen: number;
}

function fail(what: string, msg: string): PhaulError {
  return new PhaulError('protocol', `${what}: ${msg}`);
}

/** Local misuse (our own batch is malformed): a bug on this side, not the peer's. */
function bad(msg: string): PhaulError {
  return new PhaulError('failed', `encodeBatch: ${msg}`);
}

const asBuffer = (u: Uint8Array): Buffer =>
  Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength);

/**
 * The header + range table of a raw batch whose `dataBytes` of payload the
 * caller writes itself, e.g. as several views of one read buffer (the sender
 * skips its all-zero pages without concatenating the rest).
 */
export function encodeRawHead(batch: Omit<PageBatch, 'data'>, dataBytes: number): Buffer {
  return encodeHead(batch, dataBytes, false, dataBytes);
}

/** Header + range table for `batch`, with its payload described by flags/payloadLen. Checks the batch like the decoder will. */
function encodeHead(batch: Omit<PageBatch, 'data'>, dataBytes: number, lz4Flag: boolean, payloadLen: number): Buffer {
  const { pid, round, ranges } = batch;
  const data = { byteLength: dataBytes };
  if (!Number.isInteger(pid) || pid < 1 || pid > MAX_PID) throw bad(`pid ${pid} is not a process id`);
  if (!Number.isInteger(round) || round < 0 || round > MAX_ROUND) throw bad(`round ${round} is out of range`);
  const n = ranges.length;
  if (n < 1 || n > MAX_RANGES) throw bad(`${n} ranges (1..${MAX_RANGES})`);
  if (data.byteLength > MAX_RAW_BYTES) throw bad(`${data.byteLength} data bytes, more than ${MAX_RAW_BYTES}`);
  const head = Buffer.allocUnsafe(HEADER_SIZE + n * RANGE_SIZE);
  head.writeUInt32LE(BATCH_MAGIC, 0);
  head.writeUInt8(BATCH_VERSION, 4);
  head.writeUInt8(lz4Flag ? FLAG_LZ4 : 0, 5);
  head.writeUInt16LE(0, 6);
  head.writeUInt32LE(pid, 8);
  head.writeUInt32LE(round, 12);
  head.writeUInt32LE(n, 16);
  head.writeUInt32LE(data.byteLength, 20);
  head.writeUInt32LE(payloadLen, 24);
  head.writeUInt32LE(0, 28);
  let bytes = 0;
  for (let i = 0, o = HEADER_SIZE; i < n; i++, o += RANGE_SIZE) {
    const r = ranges[i];
    const v = typeof r.vaddr === 'bigint' ? Number(r.vaddr) : r.vaddr;
    const np = r.nrPages;
    if (!Number.isSafeInteger(v) || v < 0 || v % PAGE_SIZE) throw bad(`range ${i}: vaddr ${r.vaddr} is not a page address`);
    if (!Number.isInteger(np) || np < 1 || np > 0xffffffff || v + np * PAGE_SIZE > USER_ADDR_LIMIT) throw bad(`range ${i}: ${np} pages at 0x${v.toString(16)}`);
    head.writeUInt32LE(v % 0x100000000, o);
    head.writeUInt32LE(Math.floor(v / 0x100000000), o + 4);
    head.writeUInt32LE(np, o + 8);
    head.writeUInt32LE(r.zero ? RANGE_ZERO : 0, o + 12);
    if (!r.zero) bytes += np * PAGE_SIZE;
  }
  if (bytes !== data.byteLength) throw bad(`ranges need ${bytes} data bytes, batch has ${data.byteLength}`);
  return head;
}

/** Compressed payload if it is worth sending, else undefined. */
function worthIt(raw: number, compressed: Buffer, minSaving: number): Buffer | undefined {
  return compressed.length <= raw * (1 - minSaving) ? compressed : undefined;
}

function assemble(batch: PageBatch, compressed: Buffer | undefined): Buffer[] {
  const raw = batch.data.byteLength;
  if (compressed) return [encodeHead(batch, raw, true, compressed.length), compressed];
  const head = encodeHead(batch, raw, false, raw);
  // The page data itself is never copied: the socket writes the caller's buffer.
  return raw ? [head, asBuffer(batch.data)] : [head];
}

/**
 * One batch as buffers to write in order: [header + ranges, payload] (just
 * [header + ranges] when every range is zero). With compress, the data is
 * lz4-compressed and sent that way only if it shrinks by minSaving (10%):
 * below that, the receiver's decompression and our CPU cost more than the
 * bytes saved. The raw payload is the caller's buffer (no copy): keep
 * batch.data unchanged until the socket has written it.
 *
 * Synchronous: lz4 runs on the calling thread (~0.7 GB/s, one core). With
 * several connections compressing at once, prefer encodeBatchAsync.
 */
export function encodeBatch(batch: PageBatch, opts: EncodeOptions): Buffer[] {
  const raw = batch.data.byteLength;
  let compressed: Buffer | undefined;
  if (opts.compress && raw > 0 && raw <= MAX_RAW_BYTES) {
    compressed = worthIt(raw, lz4().compressSync(asBuffer(batch.data)), opts.minSaving ?? DEFAULT_MIN_SAVING);
  }
  return assemble(batch, compressed);
}

/**
 * encodeBatch with lz4 on libuv's thread pool, so parallel connections
 * compress on several cores and the event loop stays free. Same bytes as
 * encodeBatch; keep batch.data unchanged until the result has been written.
 */
export async function encodeBatchAsync(batch: PageBatch, opts: EncodeOptions): Promise<Buffer[]> {
  const raw = batch.data.byteLength;
  let compressed: Buffer | undefined;
  if (opts.compress && raw > 0 && raw <= MAX_RAW_BYTES) {
    compressed = worthIt(raw, await lz4().compress(asBuffer(batch.data)), opts.minSaving ?? DEFAULT_MIN_SAVING);
  }
  return assemble(batch, compressed);
}

/** Checks the fixed header (HEADER_SIZE bytes at buf[0]). `what` prefixes error messages. */
export function parseHeader(buf: Buffer, what = 'page batch'): BatchHeader {
  const magic = buf.readUInt32LE(0);
  if (magic !== BATCH_MAGIC) throw fail(what, `bad magic 0x${magic.toString(16)} (not a page batch, or the stream is out of step)`);
  const version = buf[4];
  if (version !== BATCH_VERSION) throw fail(what, `version ${version}, expected ${BATCH_VERSION}`);
  const flags = buf[5];
  if (flags & ~FLAG_LZ4) throw fail(what, `unknown flags 0x${flags.toString(16)}`);
  if (buf.readUInt16LE(6) !== 0 || buf.readUInt32LE(28) !== 0) throw fail(what, 'reserved header fields are not zero');
  const pid = buf.readUInt32LE(8);
  if (pid < 1 || pid > MAX_PID) throw fail(what, `pid ${pid} is not a process id`);
  const round = buf.readUInt32LE(12);
  if (round > MAX_ROUND) throw fail(what, `round ${round} is out of range`);
  const nranges = buf.readUInt32LE(16);
  if (nranges < 1 || nranges > MAX_RANGES) throw fail(what, `${nranges} ranges (allowed 1..${MAX_RANGES})`);
  const rawLen = buf.readUInt32LE(20);
  if (rawLen > MAX_RAW_BYTES) throw fail(what, `${rawLen} data bytes, more than ${MAX_RAW_BYTES}`);
  if (rawLen % PAGE_SIZE) throw fail(what, `${rawLen} data bytes is not a whole number of pages`);
  const payloadLen = buf.readUInt32LE(24);
  const lz4Flag = (flags & FLAG_LZ4) !== 0;
  if (lz4Flag) {
    if (payloadLen < 5 || payloadLen > lz4WireBound(rawLen)) throw fail(what, `lz4 payload of ${payloadLen} bytes for ${rawLen} data bytes`);
  } else if (payloadLen !== rawLen) {
    throw fail(what, `raw payload of ${payloadLen} bytes for ${rawLen} data bytes`);
  }
  return { lz4: lz4Flag, pid, round, nranges, rawLen, payloadLen };
}

/** Checks and decodes the range table (nranges * RANGE_SIZE bytes at buf[0]). */
export function parseRanges(h: BatchHeader, buf: Buffer, what = 'page batch'): PageRange[] {
  const ranges: PageRange[] = new Array(h.nranges);
  let bytes = 0;
  for (let i = 0, o = 0; i < h.nranges; i++, o += RANGE_SIZE) {
    const lo = buf.readUInt32LE(o);
    const hi = buf.readUInt32LE(o + 4);
    const nrPages = buf.readUInt32LE(o + 8);
    const flags = buf.readUInt32LE(o + 12);
    const w = `${what} (pid ${h.pid}), range ${i}`;
    // hi < 2^15 keeps vaddr < 2^47, so the arithmetic below stays exact.
    if (hi >= USER_ADDR_LIMIT / 0x100000000) throw fail(w, `vaddr 0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')} is outside user space`);
    const vaddr = hi * 0x100000000 + lo;
    if (lo % PAGE_SIZE) throw fail(w, `vaddr 0x${vaddr.toString(16)} is not page-aligned`);
    if (nrPages < 1) throw fail(w, 'nrPages is 0');
    if (vaddr + nrPages * PAGE_SIZE > USER_ADDR_LIMIT) throw fail(w, `${nrPages} pages at 0x${vaddr.toString(16)} run past user space`);
    if (flags & ~RANGE_ZERO) throw fail(w, `unknown flags 0x${flags.toString(16)}`);
    const zero = (flags & RANGE_ZERO) !== 0;
    if (!zero) {
      bytes += nrPages * PAGE_SIZE;
      // Checked per range so the sum can neither overflow nor exceed rawLen by much.
      if (bytes > h.rawLen) throw fail(`${what} (pid ${h.pid})`, `ranges need more than the ${h.rawLen} data bytes announced`);
    }
    ranges[i] = { vaddr, nrPages, zero };
  }
  if (bytes !== h.rawLen) throw fail(`${what} (pid ${h.pid})`, `ranges need ${bytes} data bytes, header announces ${h.rawLen}`);
  return ranges;
}

function checkLz4Prefix(h: BatchHeader, payload: Buffer, what: string): void {
  const n = payload.readUInt32LE(0);
  if (n !== h.rawLen) throw fail(what, `lz4 payload says ${n} bytes, header announces ${h.rawLen}`);
}

function checkOut(h: BatchHeader, out: Buffer, what: string): Buffer {
  if (out.length !== h.rawLen) throw fail(what, `lz4 payload decompressed to ${out.length} bytes, expected ${h.rawLen}`);
  return out;
}

/** The batch's data from its payload (payloadLen bytes): the payload itself when raw, else decompressed on this thread. */
export function unpackPayload(h: BatchHeader, payload: Buffer, what = 'page batch'): Buffer {
  if (!h.lz4) return payload;
  checkLz4Prefix(h, payload, what);
  let out: Buffer;
  try {
    out = lz4().uncompressSync(payload);
  } catch (e) {
    throw fail(what, `lz4 payload is corrupt (${(e as Error).message})`);
  }
  return checkOut(h, out, what);
}

/** unpackPayload with decompression on libuv's thread pool. */
export async function unpackPayloadAsync(h: BatchHeader, payload: Buffer, what = 'page batch'): Promise<Buffer> {
  if (!h.lz4) return payload;
  checkLz4Prefix(h, payload, what);
  let out: Buffer;
  try {
    out = await lz4().uncompress(payload);
  } catch (e) {
    throw fail(what, `lz4 payload is corrupt (${(e as Error).message})`);
  }
  return checkOut(h, out, what);
}

/** Total wire size of the batch whose header is h. */
export function frameSize(h: BatchHeader): number {
  return HEADER_SIZE + h.nranges * RANGE_SIZE + h.payloadLen;
}

/** Decodes exactly one complete wire batch (e.g. the concatenation of encodeBatch's buffers). */
export function decodeBatch(wire: Uint8Array): PageBatch {
  const buf = asBuffer(wire);
  if (buf.length < HEADER_SIZE) throw fail('page batch', `${buf.length} bytes, shorter than a header`);
  const h = parseHeader(buf);
  if (buf.length !== frameSize(h)) throw fail('page batch', `${buf.length} bytes, header describes ${frameSize(h)}`);
  const ranges = parseRanges(h, buf.subarray(HEADER_SIZE, HEADER_SIZE + h.nranges * RANGE_SIZE));
  const data = unpackPayload(h, buf.subarray(HEADER_SIZE + h.nranges * RANGE_SIZE));
  return { pid: h.pid, round: h.round, ranges, data: h.rawLen ? data : EMPTY };
}
