// Whether pre-copy batches are lz4-compressed (docs/DESIGN.md section 4).
//
// Why "compress only when the link is slower than the compressor": batches are
// pipelined (the socket sends batch k while we compress k+1), so with
// compression the sender moves min(lz4Bps, linkBps / ratio) bytes of memory per
// second against linkBps without. Compressing wins exactly when lz4Bps > linkBps
// (for any ratio < 1) and loses when the compressor is the slower stage. With
// lz4-napi at ~0.7 GB/s per core: 1 GbE (0.125 GB/s) gains up to 1/ratio, a
// 10 GbE link or loopback (>= 1.25 GB/s) would be slowed down to 0.7 GB/s.
// The destination decompresses faster (1.2-1.5 GB/s), so it is not the limit.
//
// We ask for HEADROOM x margin, not just "faster": near the crossover the gain
// is small while compression costs a whole core that the workload (still
// running during pre-copy) and the page reader also want, and both numbers
// are noisy. Batches that don't shrink by 10% go raw anyway (encodeBatch).
//
// Note for TLS data connections: compressed batch sizes reveal how
// compressible memory is; a peer that can both plant data in the workload and
// watch the wire could learn something from that (CRIME-style). 'none'
// avoids it.
import { lz4 } from './lz4';
import { PhaulError } from '../errors';

export type CompressionMode = 'auto' | 'lz4' | 'none';

export interface Measured {
  /** Throughput of the data connections together, bytes/s. */
  linkBps?: number;
  /**
   * What the sender can compress, bytes/s, in total: one core's measureLz4()
   * with encodeBatch (lz4 on the event loop); up to that times the number of
   * connections (bounded by cores and UV_THREADPOOL_SIZE) with encodeBatchAsync.
   */
  lz4Bps?: number;
}

/** auto compresses when linkBps * HEADROOM <= lz4Bps. */
export const HEADROOM = 1.25;

const ok = (v: number | undefined): v is number => typeof v === 'number' && Number.isFinite(v) && v > 0;

/**
 * lz4 or not, for a whole migration. 'auto' without both measurements says
 * no: sending raw is never slower than the link, compressing can be.
 */
export function chooseCompression(mode: CompressionMode, measured: Measured): boolean {
  switch (mode) {
    case 'none': return false;
    case 'lz4': return true;
    case 'auto': return ok(measured.linkBps) && ok(measured.lz4Bps) && measured.linkBps * HEADROOM <= measured.lz4Bps;
    default: throw new PhaulError('usage', `unknown compression mode '${String(mode)}' (auto, lz4 or none)`);
  }
}

const PAGE = 4096;
/**
 * measureLz4's default sample: 64 pages, enough for lz4's 64 KiB window to
 * see unlike pages. Small on purpose: every migration's source pays for
 * building and compressing it, and on a VM whose host takes free memory back
 * each compress of a 2 MiB sample wrote ~2 MiB of fresh output memory (the
 * measurement cost ~50 ms of CPU at 2 MiB, docs/BENCH.md "Where pre-copy's CPU
 * goes").
 */
const SAMPLE_BYTES = 256 * 1024;

const SAMPLE_WORDS = ['the ', 'migration ', 'page ', 'round ', 'dirty ', 'socket ', 'of ', 'and ', '{"id":', ',"v":', '\n'];

/**
 * A stand-in for process memory when no real pages are at hand: a third each
 * of pointer-rich heap-like pages (compress well), text-like pages (compress
 * moderately) and random pages (compressed or encrypted data, don't
 * compress). lz4's speed depends on the content, so real pages, when
 * available, are the better sample. The randomness is a fixed xorshift
 * sequence, not the CSPRNG: the sample is built on every migration's source
 * and needs to be cheap, not secret.
 */
export function syntheticPages(bytes = SAMPLE_BYTES): Buffer {
  const buf = Buffer.allocUnsafe(bytes - (bytes % PAGE));
  // Words written through an Int32Array and the generator kept in a local
  // int32: this runs once per process, mostly in V8's interpreter, where every
  // uint32 above 2^31 (half of xorshift's outputs, as `x >>> 0`) was a heap
  // number allocated. Same bytes as the uint32 formulation.
  const i32 = new Int32Array(buf.buffer, buf.byteOffset, buf.length / 4);
  const words = SAMPLE_WORDS.map((t) => Buffer.from(t, 'latin1'));
  const n = words.length, lowMod = 65536 % n;
  let x = 0x9e3779b9 | 0;
  for (let p = 0, i = 0; p < buf.length; p += PAGE, i++) {
    const kind = i % 3;
    if (kind === 0) {
      // 8-byte slots: pointers into one region, small integers, zeros.
      for (let o = p >> 2, end = (p + PAGE) >> 2; o < end; o += 2) {
        x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
        const k = x & 0xff;
        i32[o] = k < 96 ? 0x5600_0000 + ((x >>> 8) & 0xffff) * 16 : k < 192 ? (x >>> 8) & 0xff : 0;
        i32[o + 1] = k < 96 ? 0x7f : 0;
      }
    } else if (kind === 1) {
      for (let o = p, end = p + PAGE; o < end;) {
        x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
        // (x as uint32) % n, in small integers: high half and low half apart.
        const word = words[(((x >>> 16) % n) * lowMod + (x & 0xffff)) % n];
        for (let k = 0; k < word.length && o < end; k++) buf[o++] = word[k];
      }
    } else {
      for (let o = p >> 2, end = (p + PAGE) >> 2; o < end; o++) {
        x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
        i32[o] = x;
      }
    }
  }
  return buf;
}

let cached: number | undefined;

/**
 * lz4 compress throughput of one core on `sample`, bytes/s (default: 256 KiB of
 * syntheticPages, measured once per process and cached). Takes ~10-15 ms of
 * CPU: call once, not per round.
 */
export function measureLz4(sample?: Uint8Array): number {
  if (!sample && cached !== undefined) return cached;
  const buf = sample ? Buffer.from(sample.buffer, sample.byteOffset, sample.byteLength) : syntheticPages();
  if (buf.length === 0) throw new PhaulError('failed', 'measureLz4: empty sample');
  const { compressSync } = lz4();
  compressSync(buf); // warm-up: first call pays for loading and allocator set-up
  let bytes = 0;
  const t0 = process.hrtime.bigint();
  let ns = 0n;
  // At least 3 runs and 5 ms, so timer resolution and one hiccup don't decide
  // (the choice has a 1.25x headroom: a few percent of precision are enough).
  for (let runs = 0; runs < 3 || ns < 5_000_000n; runs++) {
    compressSync(buf);
    bytes += buf.length;
    ns = process.hrtime.bigint() - t0;
    if (ns > 1_000_000_000n) break;
  }
  const bps = bytes / (Number(ns) / 1e9);
  if (!sample) cached = bps;
  return bps;
}
