// The pre-copy page-batch codec (src/transport/page-batch.ts), its stream
// decoder and socket attachment (batch-stream.ts) and the compression chooser
// (compression.ts), without CRIU:
// round trips raw / lz4 / zero-only / mixed, batches split at every byte and in
// random chunkings, several per chunk; every decode limit refused with a
// one-line protocol error before anything is buffered; truncation; garbage and
// bit flips never crash or hang; backpressure and once-only error reporting of
// attachBatchStream, over a fake socket and loopback TCP. Speeds of 64 MiB
// encode/decode are printed ('# ...'), not asserted.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as net from 'node:net';
import { PassThrough } from 'node:stream';
import * as lz4 from 'lz4-napi';
import { PhaulError } from '../src/errors';
import {
  BATCH_MAGIC, HEADER_SIZE, MAX_RANGES, MAX_RAW_BYTES, RANGE_SIZE, decodeBatch, encodeBatch, encodeBatchAsync, lz4WireBound,
  type PageBatch,
} from '../src/transport/page-batch';
import { BatchDecoder, FrameSplitter, POOLED_PAYLOAD_MIN, attachBatchStream } from '../src/transport/batch-stream';
import { BufferPool } from '../src/transport/buffer-pool';
import { HEADROOM, chooseCompression, measureLz4, syntheticPages } from '../src/transport/compression';

import { PAGE_SIZE as P } from '../src/util/page-size';
const GiB = 1024 ** 3;

/** Deterministic pseudo-random generator (xorshift32), so failures reproduce. */
function rng(seed: number) {
  let x = seed >>> 0 || 1;
  return (n: number) => {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    return x % n;
  };
}

/** Compressible pages: each a short repeated pattern derived from `tag` and the page index. */
function pagesOf(n: number, tag: number): Buffer {
  const b = Buffer.alloc(n * P);
  for (let i = 0; i < n; i++) b.fill(`page ${tag}/${i} `, i * P, (i + 1) * P);
  return b;
}

/** A batch from [vaddr, nrPages, zero] triples; data generated for the non-zero ones. */
function mk(ranges: Array<[number | bigint, number, boolean?]>, opts: { pid?: number; round?: number; random?: boolean } = {}): PageBatch {
  const parts: Buffer[] = [];
  ranges.forEach(([, n, z], i) => { if (!z) parts.push(opts.random ? crypto.randomBytes(n * P) : pagesOf(n, i)); });
  return {
    pid: opts.pid ?? 1234,
    round: opts.round ?? 3,
    ranges: ranges.map(([vaddr, nrPages, zero]) => ({ vaddr, nrPages, zero: !!zero })),
    data: Buffer.concat(parts),
  };
}

/** What decoding must give back: numbers for vaddrs, zero always a boolean. */
function norm(b: PageBatch) {
  return {
    pid: b.pid, round: b.round,
    ranges: b.ranges.map((r) => ({ vaddr: Number(r.vaddr), nrPages: r.nrPages, zero: !!r.zero })),
    data: Buffer.from(b.data.buffer, b.data.byteOffset, b.data.byteLength).toString('hex'),
  };
}

const wire = (b: PageBatch, compress: boolean) => Buffer.concat(encodeBatch(b, { compress }));
const isLz4 = (w: Buffer) => (w[5] & 1) === 1;

/** Asserts fn throws a one-line PhaulError with `code` whose message matches re; returns it. */
function throwsPhaul(fn: () => unknown, code: string, re: RegExp): PhaulError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof PhaulError, `not a PhaulError: ${String(e)}`);
    assert.equal(e.code, code, e.message);
    assert.match(e.message, re);
    assert.ok(!e.message.includes('\n'), 'one line');
    return e;
  }
  assert.fail(`did not throw (expected ${re})`);
}

const MIXED: Array<[number | bigint, number, boolean?]> = [
  [0x400000, 3], [0x403000, 2, true], [0x7f0000000000, 1], [0x7ffffffff000, 1, true], [0x10000, 5],
];

test('round trip: raw, lz4, zero-only, mixed, bigint and top-of-user-space addresses', () => {
  const cases: Array<[string, PageBatch]> = [
    ['mixed', mk(MIXED)],
    ['zero-only', mk([[0x1000, 1000000, true], [0x7ffff0000000, 16, true]])],
    ['single page', mk([[0x5000, 1]], { pid: 1, round: 0 })],
    ['bigint vaddr, top of user space', mk([[0x7ffffff00000n, 256], [0n, 1, true]], { pid: 1 << 22, round: 0xfffffffe })],
  ];
  for (const [name, b] of cases) {
    for (const compress of [false, true]) {
      const bufs = encodeBatch(b, { compress });
      const w = Buffer.concat(bufs);
      const d = decodeBatch(w);
      assert.deepEqual(norm(d), norm(b), `${name}, compress ${compress}`);
      if (b.data.length === 0) {
        assert.equal(bufs.length, 1, 'zero-only: header and ranges only');
        assert.equal(d.data.length, 0);
        assert.equal(isLz4(w), false);
      } else {
        assert.equal(isLz4(w), compress, `${name}: compressible data goes lz4 only when asked`);
        if (compress) assert.ok(w.length < HEADER_SIZE + b.ranges.length * RANGE_SIZE + b.data.length / 2);
        else assert.equal(bufs[1].buffer, (b.data as Buffer).buffer, 'raw payload is the caller\'s memory, not a copy');
      }
    }
  }
});

test('encodeBatchAsync produces the same bytes as encodeBatch', async () => {
  for (const b of [mk(MIXED), mk(MIXED, { random: true }), mk([[0x1000, 4, true]])]) {
    for (const compress of [false, true]) {
      assert.deepEqual(Buffer.concat(await encodeBatchAsync(b, { compress })), wire(b, compress));
    }
  }
});

test('incompressible data goes raw even with compression on; the 10% rule', () => {
  const b = mk([[0x1000, 64], [0x100000, 2, true], [0x200000, 64]], { random: true });
  const bufs = encodeBatch(b, { compress: true });
  assert.equal(isLz4(bufs[0]), false);
  assert.equal(bufs[1].buffer, (b.data as Buffer).buffer, 'raw fallback sends the caller\'s buffer');
  assert.deepEqual(norm(decodeBatch(Buffer.concat(bufs))), norm(b));
  // lz4-napi's worst case stays within the bound the decoder enforces.
  for (const n of [P, 64 * P, 4096 * P]) assert.ok(lz4.compressSync(crypto.randomBytes(n)).length <= lz4WireBound(n));
  // Half random, half compressible: shrinks by ~50%, so lz4 unless the bar is set above that.
  const half = { ...b, data: Buffer.concat([b.data.subarray(0, 64 * P), pagesOf(64, 9)]) };
  assert.equal(isLz4(encodeBatch(half, { compress: true })[0]), true);
  assert.equal(isLz4(encodeBatch(half, { compress: true, minSaving: 0.6 })[0]), false);
});

test('encodeBatch refuses a malformed local batch (a bug on our side: code failed)', () => {
  const ok = mk([[0x1000, 2]]);
  const cases: Array<[PageBatch, RegExp]> = [
    [{ ...ok, pid: 0 }, /pid 0/],
    [{ ...ok, round: -1 }, /round/],
    [{ ...ok, ranges: [] }, /0 ranges/],
    [{ ...ok, ranges: [{ vaddr: 0x1001, nrPages: 2 }] }, /not a page address/],
    [{ ...ok, ranges: [{ vaddr: 0x1000, nrPages: 0 }] }, /0 pages/],
    [{ ...ok, ranges: [{ vaddr: 2 ** 47 - P, nrPages: 2 }] }, /2 pages/],
    [{ ...ok, ranges: [{ vaddr: 0x1000, nrPages: 3 }] }, /need 12288 data bytes, batch has 8192/],
    [{ ...ok, ranges: new Array(MAX_RANGES + 1).fill({ vaddr: 0, nrPages: 1, zero: true }), data: Buffer.alloc(0) }, /65537 ranges/],
    [{ ...ok, ranges: [{ vaddr: 0, nrPages: MAX_RAW_BYTES / P + 1 }], data: Buffer.alloc(MAX_RAW_BYTES + P) }, /more than 67108864/],
  ];
  for (const [b, re] of cases) for (const compress of [false, true]) throwsPhaul(() => encodeBatch(b, { compress }), 'failed', re);
});

/** A stream of batches of every kind, and the batches it must decode to. */
function sampleStream(): { bytes: Buffer; batches: PageBatch[] } {
  const batches = [
    mk([[0x1000, 2], [0x3000, 1, true]], { pid: 7, round: 0 }),
    mk([[0x9000, 3, true]], { pid: 7, round: 0 }),
    mk([[0x20000, 4], [0x30000, 1]], { pid: 8, round: 1 }),
    mk([[0x40000, 2]], { pid: 8, round: 1, random: true }),
  ];
  const bytes = Buffer.concat(batches.flatMap((b, i) => encodeBatch(b, { compress: i % 2 === 0 })));
  return { bytes, batches };
}

function decodeChunks(chunks: Buffer[]): PageBatch[] {
  const d = new BatchDecoder();
  const out: PageBatch[] = [];
  for (const c of chunks) out.push(...d.push(c));
  d.end();
  return out;
}

test('stream: split at every byte (two and three pieces), random chunkings, all in one chunk', () => {
  const { bytes, batches } = sampleStream();
  const want = batches.map(norm);
  assert.ok(isLz4(encodeBatch(batches[0], { compress: true })[0]), 'the sample has an lz4 batch');
  assert.deepEqual(decodeChunks([bytes]).map(norm), want, 'several batches in one chunk');
  const first = wire(batches[0], true);
  for (let i = 0; i <= first.length; i++) {
    assert.deepEqual(decodeChunks([first.subarray(0, i), first.subarray(i)]).map(norm), [want[0]], `split at ${i}`);
    for (let j = i; j <= first.length; j += 7) {
      assert.deepEqual(decodeChunks([first.subarray(0, i), first.subarray(i, j), first.subarray(j)]).map(norm), [want[0]], `split at ${i}, ${j}`);
    }
  }
  const r = rng(42);
  for (let iter = 0; iter < 300; iter++) {
    const chunks: Buffer[] = [];
    for (let o = 0; o < bytes.length;) {
      // Mostly small pieces, sometimes large ones: both shapes of socket reads.
      const n = r(4) === 0 ? 1 + r(20000) : 1 + r(64);
      chunks.push(bytes.subarray(o, o + n));
      o += n;
    }
    assert.deepEqual(decodeChunks(chunks).map(norm), want, `chunking ${iter}`);
  }
  // One byte at a time, through the whole stream.
  const bytewise: Buffer[] = [];
  for (let i = 0; i < bytes.length; i++) bytewise.push(bytes.subarray(i, i + 1));
  assert.deepEqual(decodeChunks(bytewise).map(norm), want);
});

test('stream: a raw batch inside one chunk is not copied; one split across chunks is copied once', () => {
  const b = mk([[0x1000, 4]]);
  const w = wire(b, false);
  const d = new BatchDecoder();
  const [got] = d.push(w);
  assert.equal(got.data.buffer, w.buffer, 'view on the socket chunk');
  const [got2] = [...d.push(w.subarray(0, 100)), ...d.push(w.subarray(100))];
  assert.notEqual(got2.data.buffer, w.buffer);
  assert.deepEqual(norm(got2), norm(b));
});

test('stream: a split payload goes into a pool buffer only when it is big (small ones never make the pool fill one)', () => {
  const pool = new BufferPool(4 << 20, 2);
  const s = new FrameSplitter(pool);
  const small = wire(mk([[0x1000, 4]]), false);
  const [f1] = [...s.push(small.subarray(0, 100)), ...s.push(small.subarray(100))];
  assert.equal(f1.pooled, undefined);
  assert.equal(f1.payload.length, 4 * P);
  assert.equal(pool.inUse, 0, 'no pool buffer was created for 16 KiB');
  const pages = POOLED_PAYLOAD_MIN / P;
  const big = wire(mk([[0x100000, pages]]), false);
  const [f2] = [...s.push(big.subarray(0, 100)), ...s.push(big.subarray(100))];
  assert.ok(f2.pooled, 'a 1 MiB payload is assembled in a pool buffer');
  assert.equal(f2.payload.buffer, f2.pooled!.buffer);
  assert.equal(pool.inUse, 1);
  assert.ok(f2.payload.equals(big.subarray(big.length - POOLED_PAYLOAD_MIN)), "the payload, intact");
});

test('stream: truncated at any point is a network error at end(), except at batch boundaries', () => {
  const { bytes, batches } = sampleStream();
  const bounds = new Set<number>([0]);
  let o = 0;
  for (const b of batches) bounds.add((o += wire(b, batches.indexOf(b) % 2 === 0).length));
  for (let cut = 0; cut <= bytes.length; cut += cut < 300 ? 1 : 97) {
    const d = new BatchDecoder();
    d.push(bytes.subarray(0, cut));
    if (bounds.has(cut)) d.end();
    else throwsPhaul(() => d.end(), 'network', /data connection ended inside page batch #\d+ \(\d+ of \d+ bytes/);
  }
});

// ---- hostile input ----

interface Hdr {
  magic: number; version: number; flags: number; res16: number; pid: number; round: number;
  nranges: number; rawLen: number; payloadLen: number; res32: number;
}

/** A hand-made wire batch: header fields, range entries [vaddr, nrPages, flags], payload. */
function craft(h: Partial<Hdr>, ranges: Array<[number, number, number?]>, payload: Buffer): Buffer {
  const f: Hdr = {
    magic: BATCH_MAGIC, version: 1, flags: 0, res16: 0, pid: 100, round: 1,
    nranges: ranges.length, rawLen: payload.length, payloadLen: payload.length, res32: 0, ...h,
  };
  const b = Buffer.alloc(HEADER_SIZE + ranges.length * RANGE_SIZE);
  b.writeUInt32LE(f.magic, 0); b.writeUInt8(f.version, 4); b.writeUInt8(f.flags, 5); b.writeUInt16LE(f.res16, 6);
  b.writeUInt32LE(f.pid, 8); b.writeUInt32LE(f.round, 12); b.writeUInt32LE(f.nranges, 16);
  b.writeUInt32LE(f.rawLen, 20); b.writeUInt32LE(f.payloadLen, 24); b.writeUInt32LE(f.res32, 28);
  ranges.forEach(([v, n, fl], i) => {
    b.writeBigUInt64LE(BigInt(v), HEADER_SIZE + i * RANGE_SIZE);
    b.writeUInt32LE(n, HEADER_SIZE + i * RANGE_SIZE + 8);
    b.writeUInt32LE(fl ?? 0, HEADER_SIZE + i * RANGE_SIZE + 12);
  });
  return Buffer.concat([b, payload]);
}

test('every decode limit is refused with a one-line protocol error', () => {
  const page = pagesOf(1, 1);
  const two = pagesOf(2, 1);
  const z = lz4.compressSync(two);
  const shortLz4 = lz4.compressSync(page);
  shortLz4.writeUInt32LE(2 * P, 0); // prefix claims 2 pages, block holds one
  const cases: Array<[string, Buffer, RegExp]> = [
    ['magic', craft({ magic: 0x12345678 }, [[0x1000, 1]], page), /bad magic 0x12345678/],
    ['version', craft({ version: 2 }, [[0x1000, 1]], page), /version 2, expected 1/],
    ['unknown flag', craft({ flags: 0x80 }, [[0x1000, 1]], page), /unknown flags 0x80/],
    ['reserved16', craft({ res16: 1 }, [[0x1000, 1]], page), /reserved/],
    ['reserved32', craft({ res32: 1 }, [[0x1000, 1]], page), /reserved/],
    ['pid 0', craft({ pid: 0 }, [[0x1000, 1]], page), /pid 0 is not a process id/],
    ['pid too big', craft({ pid: (1 << 22) + 1 }, [[0x1000, 1]], page), /pid 4194305/],
    ['round', craft({ round: 0xffffffff }, [[0x1000, 1]], page), /round 4294967295/],
    ['no ranges', craft({ nranges: 0 }, [], page), /0 ranges/],
    ['too many ranges', craft({ nranges: MAX_RANGES + 1 }, [], Buffer.alloc(0)), /65537 ranges/],
    ['raw too big', craft({ nranges: 1, rawLen: MAX_RAW_BYTES + P, payloadLen: MAX_RAW_BYTES + P }, [], Buffer.alloc(0)), /67112960 data bytes, more than 67108864/],
    ['raw huge', craft({ nranges: 1, rawLen: 0xfffff000, payloadLen: 0xfffff000 }, [], Buffer.alloc(0)), /more than 67108864/],
    ['raw not pages', craft({ rawLen: 100, payloadLen: 100 }, [[0x1000, 1]], Buffer.alloc(100)), /not a whole number of pages/],
    ['raw payload length', craft({ payloadLen: P + 1 }, [[0x1000, 1]], page), /raw payload of 4097 bytes for 4096/],
    ['lz4 payload over bound', craft({ flags: 1, rawLen: P, payloadLen: lz4WireBound(P) + 1 }, [[0x1000, 1]], Buffer.alloc(0)), new RegExp(`lz4 payload of ${lz4WireBound(P) + 1} bytes for 4096`)],
    ['lz4 payload tiny', craft({ flags: 1, rawLen: P, payloadLen: 4 }, [[0x1000, 1]], Buffer.alloc(4)), /lz4 payload of 4 bytes/],
    ['unaligned', craft({}, [[0x1008, 1]], page), /range 0: vaddr 0x1008 is not page-aligned/],
    ['vaddr >= 2^47', craft({}, [[2 ** 47, 1]], page), /outside user space/],
    ['vaddr 2^63', craft({}, [[0, 1], [0, 1, 1]], page).fill(0xff, HEADER_SIZE + RANGE_SIZE, HEADER_SIZE + RANGE_SIZE + 8), /range 1: vaddr 0xffffffffffffffff is outside/],
    ['run past 2^47', craft({}, [[2 ** 47 - P, 2, 1], [0x1000, 1]], page), /range 0: 2 pages at 0x7ffffffff000 run past user space/],
    ['nrPages 0', craft({}, [[0x1000, 0]], page), /nrPages is 0/],
    ['range flags', craft({}, [[0x1000, 1, 2]], page), /range 0: unknown flags 0x2/],
    ['pages > data', craft({}, [[0x1000, 2]], page), /ranges need more than the 4096 data bytes/],
    ['pages < data', craft({}, [[0x1000, 1]], two), /ranges need 4096 data bytes, header announces 8192/],
    ['huge nrPages', craft({}, [[0, 0xffffffff]], page), /run past user space|more than/],
    ['data for zero range', craft({}, [[0x1000, 1, 1]], page), /ranges need 0 data bytes, header announces 4096/],
    ['lz4 prefix', craft({ flags: 1, rawLen: P, payloadLen: z.length }, [[0x1000, 1]], z), /lz4 payload says 8192 bytes, header announces 4096/],
    ['lz4 corrupt', craft({ flags: 1, rawLen: 2 * P, payloadLen: z.length }, [[0x1000, 2]], Buffer.concat([z.subarray(0, 4), Buffer.alloc(z.length - 4, 0xf0)])), /lz4 payload is corrupt/],
    ['lz4 short output', craft({ flags: 1, rawLen: 2 * P, payloadLen: shortLz4.length }, [[0x1000, 2]], shortLz4), /decompressed to 4096 bytes, expected 8192/],
  ];
  for (const [name, w, re] of cases) {
    throwsPhaul(() => decodeBatch(w), 'protocol', re);
    // The stream decoder gives the same verdict, then stays dead.
    const d = new BatchDecoder();
    const e = throwsPhaul(() => d.push(w), 'protocol', re);
    assert.match(e.message, /^page batch #1/, name);
    assert.equal(throwsPhaul(() => d.push(Buffer.alloc(1)), 'protocol', re), e, `${name}: dead after the error`);
    assert.equal(throwsPhaul(() => d.end(), 'protocol', re), e);
  }
  // And decodeBatch wants exactly one batch.
  const good = wire(mk([[0x1000, 1]]), false);
  throwsPhaul(() => decodeBatch(good.subarray(0, 20)), 'protocol', /shorter than a header/);
  throwsPhaul(() => decodeBatch(Buffer.concat([good, Buffer.alloc(1)])), 'protocol', /header describes/);
});

test('limits are checked from the header alone, before the body is waited for or buffered', () => {
  // 32 bytes announcing a 1 GiB batch: refused at once, nothing else needed.
  const hdr = craft({ nranges: 1, rawLen: GiB, payloadLen: GiB }, [], Buffer.alloc(0)).subarray(0, HEADER_SIZE);
  throwsPhaul(() => new BatchDecoder().push(hdr), 'protocol', /more than 67108864/);
  // A bad range table fails before its payload arrives.
  const w = craft({}, [[0x1001, 1]], pagesOf(1, 0));
  throwsPhaul(() => new BatchDecoder().push(w.subarray(0, HEADER_SIZE + RANGE_SIZE)), 'protocol', /not page-aligned/);
  // A good header waits for the rest, holding only what arrived.
  const d = new BatchDecoder();
  assert.deepEqual(d.push(wire(mk([[0x1000, 4]]), false).subarray(0, HEADER_SIZE + RANGE_SIZE + 10)), []);
  assert.equal(d.buffered, 10);
});

test('random garbage and bit flips never crash or hang: PhaulError or valid batches', () => {
  const r = rng(7);
  let rejected = 0;
  for (let iter = 0; iter < 2000; iter++) {
    const len = r(4) === 0 ? r(4000) : r(120);
    const g = Buffer.alloc(len);
    for (let i = 0; i < len; i++) g[i] = r(256);
    // Half of them start like a batch so the later checks get exercised.
    if (iter % 2 && len >= 8) { g.writeUInt32LE(BATCH_MAGIC, 0); g[4] = 1; g[5] &= 1; g[6] = g[7] = 0; }
    const d = new BatchDecoder();
    try {
      for (let o = 0; o < len;) { const n = 1 + r(50); d.push(g.subarray(o, o + n)); o += n; }
      d.end();
    } catch (e) {
      assert.ok(e instanceof PhaulError, String(e));
      assert.ok(e.code === 'protocol' || e.code === 'network', e.message);
      rejected++;
    }
  }
  assert.ok(rejected > 1900, `${rejected} of 2000 garbage streams rejected`);
  // Single bit flips and byte overwrites in valid raw and lz4 batches.
  const { bytes } = sampleStream();
  let ok = 0, bad = 0;
  for (let iter = 0; iter < 3000; iter++) {
    const m = Buffer.from(bytes);
    const at = r(m.length);
    if (iter % 2) m[at] ^= 1 << r(8); else m[at] = r(256);
    const d = new BatchDecoder();
    try {
      for (const b of d.push(m)) assert.ok(b.data.length <= MAX_RAW_BYTES && b.ranges.length >= 1);
      d.end();
      ok++;
    } catch (e) {
      assert.ok(e instanceof PhaulError, String(e));
      bad++;
    }
  }
  assert.ok(ok > 0 && bad > 0, `bit flips: ${ok} decoded (payload bits), ${bad} rejected`);
});

// ---- attachBatchStream ----

/** A PassThrough posing as a socket: pause()/resume() and isPaused() behave like a socket's. */
function fakeSocket() {
  return new PassThrough();
}

const tick = () => new Promise((r) => setImmediate(r));

test('attach: in-order delivery with async lz4, window backpressure, clean end with stats', async () => {
  const sock = fakeSocket();
  const batches = Array.from({ length: 12 }, (_, i) => mk([[0x1000 * (i + 1) * 16, 1 + (i % 3)], [0x900000, 1, true]], { round: i, random: i % 4 === 3 }));
  const got: PageBatch[] = [];
  const release: Array<() => void> = [];
  let inFlight = 0, maxInFlight = 0;
  const h = attachBatchStream(sock, (b) => {
    got.push(b);
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    return new Promise<void>((res) => release.push(() => { inFlight--; res(); }));
  }, undefined, { window: 3 });
  for (const b of batches) sock.write(Buffer.concat(encodeBatch(b, { compress: true })));
  sock.end();
  // Nothing resolves yet: 3 batches get to onBatch (decompression takes a
  // thread-pool round trip, hence the bounded wait), then the socket pauses.
  for (let t0 = Date.now(); got.length < 3 && Date.now() - t0 < 5000;) await new Promise((r) => setTimeout(r, 1));
  for (let i = 0; i < 20; i++) await tick();
  assert.equal(got.length, 3);
  assert.equal(sock.isPaused(), true, 'paused with the window full');
  for (let t0 = Date.now(); (got.length < batches.length || release.length) && Date.now() - t0 < 10000;) {
    const r = release.shift();
    if (r) r();
    await new Promise((res) => setTimeout(res, 1));
  }
  const stats = await h.done;
  assert.deepEqual(got.map(norm), batches.map(norm), 'all batches, in order');
  assert.ok(maxInFlight <= 3 + 1, `at most the window (+ the batches of one chunk) in flight: ${maxInFlight}`);
  assert.equal(stats.batches, batches.length);
  assert.equal(stats.rawBytes, batches.reduce((s, b) => s + b.data.length, 0));
  assert.ok(stats.wireBytes > 0);
});

test('attach: errors are reported once (bad data, onBatch rejecting, truncation, socket error)', async () => {
  const good = wire(mk([[0x1000, 1]]), true);
  const scenarios: Array<[string, (s: PassThrough) => void, (b: PageBatch) => Promise<void>, string, RegExp]> = [
    ['garbage after a good batch', (s) => { s.write(good); s.write(Buffer.alloc(64, 0xee)); s.write(good); s.end(); }, async () => {}, 'protocol', /page batch #2: bad magic/],
    ['onBatch rejects', (s) => { s.write(good); s.write(good); s.end(); }, async () => { throw new PhaulError('protocol', 'store says no'); }, 'protocol', /store says no/],
    ['onBatch throws synchronously', (s) => { s.write(good); s.end(); }, () => { throw new Error('boom'); }, 'failed', /boom/],
    ['truncated', (s) => { s.write(good.subarray(0, good.length - 1)); s.end(); }, async () => {}, 'network', /ended inside page batch #1/],
    ['socket error', (s) => { s.write(good); s.destroy(new Error('ECONNRESET')); }, async () => {}, 'network', /data connection failed: ECONNRESET/],
    ['closed without end', (s) => { s.destroy(); }, async () => {}, 'network', /closed before the end/],
  ];
  for (const [name, drive, onBatch, code, re] of scenarios) {
    const s = fakeSocket();
    const errors: PhaulError[] = [];
    const h = attachBatchStream(s, onBatch, (e) => errors.push(e));
    drive(s);
    await assert.rejects(h.done, (e: unknown) => e instanceof PhaulError && e.code === code && re.test(e.message), name);
    for (let i = 0; i < 10; i++) await tick();
    s.emit('error', new Error('late error')); // must neither throw nor be reported again
    assert.equal(errors.length, 1, `${name}: reported once`);
    assert.match(errors[0].message, re);
  }
});

test('attach over loopback TCP: many batches, encodeBatchAsync on the sender, checksums match', async () => {
  const batches = Array.from({ length: 40 }, (_, i) => mk(
    [[0x100000 * (i + 1), 1 + (i % 16)], [0x7f0000000000 + i * P * 64, 3, true], [0x200000000 + i * P * 64, 8]],
    { pid: 1000 + (i % 3), round: i >> 3, random: i % 5 === 0 }));
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  const srv = await accepted;
  const got: string[] = [];
  const h = attachBatchStream(srv, async (b) => {
    await new Promise((r) => setTimeout(r, 1)); // a slow store
    got.push(crypto.createHash('sha256').update(JSON.stringify(norm(b))).digest('hex'));
  }, undefined, { window: 2 });
  for (const b of batches) for (const buf of await encodeBatchAsync(b, { compress: true })) client.write(buf);
  client.end();
  await h.done;
  srv.destroy();
  server.close();
  assert.deepEqual(got, batches.map((b) => crypto.createHash('sha256').update(JSON.stringify(norm(b))).digest('hex')));
});

// ---- compression choice ----

test('chooseCompression: none/lz4 are forced; auto compresses only when the link is slower than lz4', () => {
  const lz4Bps = 0.7e9;
  assert.equal(chooseCompression('none', { linkBps: 1e6, lz4Bps }), false);
  assert.equal(chooseCompression('lz4', { linkBps: 10e9, lz4Bps }), true);
  assert.equal(chooseCompression('lz4', {}), true);
  assert.equal(chooseCompression('auto', { linkBps: 0.125e9, lz4Bps }), true, '1 GbE');
  assert.equal(chooseCompression('auto', { linkBps: 1.25e9, lz4Bps }), false, '10 GbE');
  assert.equal(chooseCompression('auto', { linkBps: lz4Bps / HEADROOM, lz4Bps }), true, 'at the margin');
  assert.equal(chooseCompression('auto', { linkBps: lz4Bps / HEADROOM * 1.01, lz4Bps }), false, 'just past the margin');
  assert.equal(chooseCompression('auto', { lz4Bps }), false, 'unknown link: raw');
  assert.equal(chooseCompression('auto', { linkBps: 1e6 }), false, 'unmeasured lz4: raw');
  assert.equal(chooseCompression('auto', { linkBps: NaN, lz4Bps }), false);
  assert.equal(chooseCompression('auto', { linkBps: 0, lz4Bps }), false);
  throwsPhaul(() => chooseCompression('zstd' as never, {}), 'usage', /unknown compression mode 'zstd'/);
});

test('measureLz4 returns a throughput (printed)', () => {
  const t0 = Date.now();
  const bps = measureLz4();
  const ms = Date.now() - t0;
  assert.ok(Number.isFinite(bps) && bps > 1e6, String(bps));
  assert.equal(measureLz4(), bps, 'cached');
  const sample = syntheticPages(2 * 1024 * 1024);
  const ratio = lz4.compressSync(sample).length / sample.length;
  console.log(`# measureLz4(): ${(bps / 1e9).toFixed(2)} GB/s in ${ms} ms (synthetic pages, lz4 ratio ${ratio.toFixed(2)}); ` +
    `auto compresses below ${(bps / HEADROOM / 1e9).toFixed(2)} GB/s of link`);
});

test('syntheticPages is the fixed xorshift sample: the same bytes as its plain uint32 formulation', () => {
  // The sample as first written (a closure generator and uint32 arithmetic); the
  // module's faster form must not change what measureLz4 measures.
  const reference = (bytes: number): Buffer => {
    const buf = Buffer.alloc(bytes - (bytes % 4096));
    const w32 = new Uint32Array(buf.buffer, buf.byteOffset, buf.length / 4);
    let x = 0x9e3779b9;
    const next = () => { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; return x >>> 0; };
    const words = ['the ', 'migration ', 'page ', 'round ', 'dirty ', 'socket ', 'of ', 'and ', '{"id":', ',"v":', '\n'].map((t) => Buffer.from(t, 'latin1'));
    for (let p = 0, i = 0; p < buf.length; p += 4096, i++) {
      const kind = i % 3;
      if (kind === 0) {
        for (let o = p / 4; o < (p + 4096) / 4; o += 2) {
          const r = next();
          const k = r & 0xff;
          w32[o] = k < 96 ? 0x5600_0000 + ((r >>> 8) & 0xffff) * 16 : k < 192 ? (r >>> 8) & 0xff : 0;
          w32[o + 1] = k < 96 ? 0x7f : 0;
        }
      } else if (kind === 1) {
        for (let o = p; o < p + 4096;) {
          const word = words[next() % words.length];
          for (let k = 0; k < word.length && o < p + 4096; k++) buf[o++] = word[k];
        }
      } else {
        for (let o = p / 4; o < (p + 4096) / 4; o++) w32[o] = next();
      }
    }
    return buf;
  };
  for (const bytes of [256 * 1024, 2 * 1024 * 1024 + 100, 4096, 0]) {
    assert.ok(syntheticPages(bytes).equals(reference(bytes)), `${bytes} bytes`);
  }
});
