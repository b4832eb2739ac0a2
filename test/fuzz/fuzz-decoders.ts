// A mutation fuzzer for the TypeScript decoders of what peers send: the
// control-frame decoder (frames.ts FrameConn, before and after `protect`) and
// the page-batch decoder (page-batch.ts and its stream, batch-stream.ts).
// Inputs start from valid encodings and are mutated (bit flips, interesting
// integers at length and count fields, insertions, deletions, truncation,
// splices). A finding is any outcome but a decoded value or a PhaulError: a
// TypeError or RangeError (also when wrapped as the cause of a PhaulError),
// or a hang. Findings are written to OUT/crash-TARGET-HASH.
//   node dist/test/fuzz/fuzz-decoders.js TARGET SECONDS OUT     (scripts/fuzz.sh)
// fuzzOne() replays one input; test/fuzz-regressions.test.ts replays every
// saved finding and runs each target briefly.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { encodeFrame, FrameConn, FrameKeys, Message } from '../../src/protocol/frames';
import { encodeBatch, HEADER_SIZE, parseHeader, parseRanges, RANGE_SIZE, unpackPayload } from '../../src/transport/page-batch';
import { attachBatchStream } from '../../src/transport/batch-stream';
import { PhaulError } from '../../src/errors';

export type Target = 'frames' | 'batches';
export const TARGETS: Target[] = ['frames', 'batches'];
const HANG_MS = 5000;

/** Throws unless e is a PhaulError that does not wrap a programming error. */
function expectPhaulError(e: unknown): void {
  if (!(e instanceof PhaulError)) throw new Error(`not a PhaulError: ${(e as Error)?.stack ?? e}`);
  const cause = (e as Error & { cause?: unknown }).cause;
  if (cause instanceof Error && !(cause instanceof PhaulError)) throw new Error(`a PhaulError wrapping ${cause.stack}`);
}

function withTimeout<T>(p: Promise<T>, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<never>((_, j) => { t = setTimeout(() => j(new Error(`hang: ${what}`)), HANG_MS); })])
    .finally(() => clearTimeout(t));
}

const KEYS: FrameKeys = { send: Buffer.alloc(32, 1), receive: Buffer.alloc(32, 1) };

/** Feeds input to a FrameConn (first byte: 1 = protected) and reads every message it yields. */
async function fuzzFrames(input: Buffer): Promise<void> {
  if (input.length < 1) return;
  const wire = new PassThrough();
  const c = new FrameConn(wire, 'fuzz');
  if (input[0] & 1) c.protect(KEYS);
  wire.end(input.subarray(1));
  for (;;) {
    let m: Message;
    try {
      m = await withTimeout(c.next(HANG_MS * 2), 'FrameConn.next');
    } catch (e) {
      if ((e as Error).message.startsWith('hang')) throw e;
      expectPhaulError(e);
      return;
    }
    if (typeof m.t !== 'string') throw new Error('a message without a string t was delivered');
  }
}

/** Decodes input as a stream of page batches, both with the pure decoders and the stream. */
async function fuzzBatches(input: Buffer): Promise<void> {
  // Pure decoders on the first batch.
  try {
    if (input.length >= HEADER_SIZE) {
      const h = parseHeader(input);
      const ranges = input.subarray(HEADER_SIZE, HEADER_SIZE + h.nranges * RANGE_SIZE);
      if (ranges.length === h.nranges * RANGE_SIZE) {
        parseRanges(h, ranges);
        const off = HEADER_SIZE + ranges.length;
        if (input.length >= off + h.payloadLen) unpackPayload(h, input.subarray(off, off + h.payloadLen));
      }
    }
  } catch (e) {
    expectPhaulError(e);
  }
  // The stream, as a data connection feeds it.
  const wire = new PassThrough();
  const h = attachBatchStream(wire, async (b) => {
    if (b.data.byteLength !== b.ranges.filter((r) => !r.zero).reduce((n, r) => n + r.nrPages * 4096, 0))
      throw new Error('a batch whose data does not match its ranges was delivered');
  });
  for (let off = 0; off < input.length; off += 1500) wire.write(input.subarray(off, off + 1500));
  wire.end();
  try {
    await withTimeout(h.done, 'batch stream');
  } catch (e) {
    if ((e as Error).message.startsWith('hang') || (e as Error).message.includes('was delivered')) throw e;
    expectPhaulError(e);
  }
}

export function fuzzOne(target: Target, input: Buffer): Promise<void> {
  return target === 'frames' ? fuzzFrames(input) : fuzzBatches(input);
}

// ---------------------------------------------------------------- seeds

function protectedFrame(msg: Message, seq: bigint): Buffer {
  const plain = encodeFrame(msg);
  const body = plain.subarray(4);
  const s = Buffer.alloc(8);
  s.writeBigUInt64BE(seq);
  const tag = crypto.createHmac('sha256', KEYS.send).update(s).update(body).digest().subarray(0, 16);
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length + 16);
  return Buffer.concat([head, body, tag]);
}

export function seeds(target: Target): Buffer[] {
  if (target === 'frames') {
    const msgs: Message[] = [
      { t: 'hello', proto: 4, role: 'control', session: '', nonce: Buffer.alloc(32, 3), kx: Buffer.alloc(32, 4) },
      { t: 'image', name: 'core-1.img', data: Buffer.alloc(300, 7), append: false },
      { t: 'layout', procs: [{ pid: 42, ranges: [{ vaddr: 0x7f0000000000, nrPages: 16 }] }] },
      { t: 'error', code: 'auth', message: 'no' },
    ];
    return [
      Buffer.concat([Buffer.from([0]), ...msgs.map(encodeFrame)]),
      Buffer.concat([Buffer.from([1]), ...msgs.map((m, i) => protectedFrame(m, BigInt(i)))]),
    ];
  }
  const page = (v: number) => Buffer.alloc(4096, v);
  const batches = [
    { pid: 7, round: 0, ranges: [{ vaddr: 0x1000, nrPages: 2, zero: false }, { vaddr: 0x10000, nrPages: 5, zero: true }], data: Buffer.concat([page(1), page(2)]) },
    { pid: 8, round: 3, ranges: [{ vaddr: 0x7f0000000000, nrPages: 1, zero: false }], data: page(0) },
  ];
  return [
    Buffer.concat(batches.flatMap((b) => encodeBatch(b, { compress: false }))),
    Buffer.concat(batches.flatMap((b) => encodeBatch(b, { compress: true, minSaving: 0 }))),
  ];
}

// ---------------------------------------------------------------- mutation

const INTERESTING32 = [0, 1, 4, 15, 16, 4095, 4096, 4097, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];

export class Rng {
  constructor(private s: number) {}
  next(): number {
    // xorshift32
    let x = this.s;
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    this.s = x;
    return x;
  }
  below(n: number): number {
    return n <= 0 ? 0 : this.next() % n;
  }
}

export function mutate(rng: Rng, input: Buffer, pool: Buffer[]): Buffer {
  let b = Buffer.from(input);
  const rounds = 1 + rng.below(4);
  for (let r = 0; r < rounds; r++) {
    const at = rng.below(b.length);
    switch (rng.below(8)) {
      case 0: if (b.length) b[at] ^= 1 << rng.below(8); break;
      case 1: if (b.length) b[at] = [0, 0xff, 0x7f, 0x80, 0xc0, 0xc1, 0xd9, 0xdb, 0xc6][rng.below(9)]; break;
      case 2: if (b.length >= 4) {
        const v = INTERESTING32[rng.below(INTERESTING32.length)];
        const o = Math.min(at, b.length - 4);
        if (rng.below(2)) b.writeUInt32LE(v >>> 0, o); else b.writeUInt32BE(v >>> 0, o);
      } break;
      case 3: b = Buffer.concat([b.subarray(0, at), crypto.randomBytes(1 + rng.below(16)), b.subarray(at)]); break;
      case 4: b = Buffer.concat([b.subarray(0, at), b.subarray(Math.min(b.length, at + 1 + rng.below(64)))]); break;
      case 5: b = b.subarray(0, at); break;
      case 6: {
        const other = pool[rng.below(pool.length)];
        const o = rng.below(other.length);
        b = Buffer.concat([b.subarray(0, at), other.subarray(o, o + 1 + rng.below(512))]);
      } break;
      default: if (b.length >= 8) {
        const o = Math.min(at, b.length - 8);
        b.writeBigUInt64LE(BigInt(rng.next()) << BigInt(rng.below(33)), o);
      }
    }
  }
  return b;
}

/** Fuzzes target for ms; returns the number of inputs run, or throws with the finding saved under out. */
export async function fuzz(target: Target, ms: number, out: string, seed = Date.now() >>> 0): Promise<number> {
  const rng = new Rng(seed || 1);
  const pool = seeds(target);
  const end = Date.now() + ms;
  let n = 0;
  while (Date.now() < end) {
    const input = mutate(rng, pool[rng.below(pool.length)], pool);
    try {
      await fuzzOne(target, input);
    } catch (e) {
      fs.mkdirSync(out, { recursive: true });
      const file = path.join(out, `crash-${target}-${crypto.createHash('sha1').update(input).digest('hex').slice(0, 16)}`);
      fs.writeFileSync(file, input);
      throw new Error(`${target}: finding after ${n} inputs (seed ${seed}), saved as ${file}: ${(e as Error).message}`);
    }
    n++;
    // Some mutants join the pool: mutations of mutations reach further.
    if (pool.length < 256 && rng.below(64) === 0) pool.push(input);
  }
  return n;
}

if (require.main === module) {
  const [target, secs, out] = process.argv.slice(2);
  if (!TARGETS.includes(target as Target)) {
    process.stderr.write(`usage: fuzz-decoders.js ${TARGETS.join('|')} SECONDS OUTDIR\n`);
    process.exit(2);
  }
  fuzz(target as Target, Number(secs) * 1000, out ?? '.cache/fuzz').then((n) => {
    process.stderr.write(`fuzz: ${target}: ${n} inputs in ${secs} s, no finding\n`);
  }, (e) => {
    process.stderr.write(`fuzz: ${(e as Error).message}\n`);
    process.exit(1);
  });
}
