// Receiving page batches (page-batch.ts) from a data connection.
//
//   const dec = new BatchDecoder();
//   for (const b of dec.push(chunk)) ...;   // 0..n complete batches per chunk
//   dec.end();                              // throws if the stream stopped inside a batch
//
//   const h = attachBatchStream(socket, (b) => store.write(b), (err) => ...);
//   await h.done;                           // peer ended at a batch boundary, all onBatch settled
//
// Chunks are kept as a list and copied once, when a batch's payload is
// complete (and not at all when it sits inside one chunk): the receiver's one
// copy. Every size is checked from the 32-byte header before bytes are
// buffered for it. After an error the decoder is dead: the caller closes the
// connection (there is no way to find the next batch in a corrupt stream).
import type { Readable } from 'node:stream';
import { PhaulError, asPhaulError } from '../errors';
import { BufferPool } from './buffer-pool';
import {
  HEADER_SIZE, RANGE_SIZE, parseHeader, parseRanges, unpackPayload, unpackPayloadAsync,
  type BatchHeader, type PageBatch, type PageRange,
} from './page-batch';
import type { NativeBatchConn } from '../native';
import type { IncomingBatch, PayloadPull } from '../store/page-store';

const EMPTY = Buffer.alloc(0);

/**
 * Payloads at least this big go into pooled 4 MiB buffers (buffer-pool.ts:
 * used again and again, since fresh memory is slow to fill on the VMs we run
 * on); smaller ones get a buffer of their own size, which the allocator
 * serves from memory it already has. A pool buffer costs ~10-20 ms of CPU the
 * first time it is filled: the few small batches of a late round (e.g. lz4
 * chosen after the first round) would pay that for a few KiB.
 */
export const POOLED_PAYLOAD_MIN = 1 << 20;

/** A batch cut from the stream, checked except for its (maybe compressed) payload. */
export interface Frame {
  header: BatchHeader;
  ranges: PageRange[];
  payload: Buffer;
  /** Bytes on the wire. */
  wireBytes: number;
  /** The pool buffer the payload was copied into, to release once the batch is stored. */
  pooled?: Buffer;
}

/** Bytes received but not yet consumed, as the chunks they came in. */
class ChunkQueue {
  private chunks: Buffer[] = [];
  private off = 0; // consumed bytes of chunks[0]
  length = 0;

  push(b: Buffer): void {
    if (b.length === 0) return;
    this.chunks.push(b);
    this.length += b.length;
  }

  /** The next n bytes (n <= length): a view when they lie in one chunk, else one copy (into `into` when it is big enough). */
  take(n: number, into?: Buffer): Buffer {
    if (n === 0) return EMPTY;
    this.length -= n;
    const first = this.chunks[0];
    if (first.length - this.off >= n) {
      const out = first.subarray(this.off, this.off + n);
      this.off += n;
      if (this.off === first.length) { this.chunks.shift(); this.off = 0; }
      return out;
    }
    const out = into && into.length >= n ? into.subarray(0, n) : Buffer.allocUnsafe(n);
    let done = 0;
    while (done < n) {
      const c = this.chunks[0];
      const k = Math.min(c.length - this.off, n - done);
      c.copy(out, done, this.off, this.off + k);
      done += k;
      this.off += k;
      if (this.off === c.length) { this.chunks.shift(); this.off = 0; }
    }
    return out;
  }
}

/** Cuts a byte stream into checked frames; decompression is left to the caller. */
export class FrameSplitter {
  private readonly q = new ChunkQueue();

  /** With a pool, payloads that span socket chunks are assembled in its buffers (buffer-pool.ts). */
  constructor(private readonly pool?: BufferPool) {}
  private header?: BatchHeader;
  private ranges?: PageRange[];
  private dead?: PhaulError;
  /** Complete batches seen so far. */
  count = 0;

  /** Bytes received and not yet part of a returned frame. */
  get buffered(): number {
    return this.q.length;
  }

  /** Whether the stream stands at a batch boundary (a clean place to end). */
  get idle(): boolean {
    return this.q.length === 0 && !this.header;
  }

  /** What error messages call the batch being parsed. */
  private what(): string {
    return `page batch #${this.count + 1}`;
  }

  /**
   * Adds a chunk (ownership passes to the splitter: don't modify it later)
   * and returns the frames it completes. Throws PhaulError('protocol') on
   * bad data; from then on every call throws that same error.
   */
  push(chunk: Uint8Array): Frame[] {
    if (this.dead) throw this.dead;
    try {
      this.q.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
      const out: Frame[] = [];
      for (;;) {
        if (!this.header) {
          if (this.q.length < HEADER_SIZE) break;
          this.header = parseHeader(this.q.take(HEADER_SIZE), this.what());
        }
        const h = this.header;
        if (!this.ranges) {
          if (this.q.length < h.nranges * RANGE_SIZE) break;
          // Checked before the payload is waited for: a bad table fails early.
          this.ranges = parseRanges(h, this.q.take(h.nranges * RANGE_SIZE), this.what());
        }
        if (this.q.length < h.payloadLen) break;
        const spare = this.pool && h.payloadLen >= POOLED_PAYLOAD_MIN && h.payloadLen <= this.pool.size ? this.pool.tryAcquire() : undefined;
        const payload = this.q.take(h.payloadLen, spare);
        const pooled = spare && payload.buffer === spare.buffer ? spare : undefined;
        if (spare && !pooled) this.pool!.release(spare);
        out.push({ header: h, ranges: this.ranges, payload, wireBytes: HEADER_SIZE + h.nranges * RANGE_SIZE + h.payloadLen, pooled });
        this.header = undefined;
        this.ranges = undefined;
        this.count++;
      }
      return out;
    } catch (e) {
      throw (this.dead = asPhaulError(e, 'protocol'));
    }
  }

  /** The peer finished sending: throws PhaulError('network') if it stopped inside a batch. */
  end(): void {
    if (this.dead) throw this.dead;
    if (!this.idle) {
      const h = this.header;
      const need = h ? h.nranges * RANGE_SIZE + h.payloadLen - (this.ranges ? h.nranges * RANGE_SIZE : 0) : HEADER_SIZE;
      this.dead = new PhaulError('network', `data connection ended inside ${this.what()} (${this.q.length} of ${need} bytes${h ? ' after the header' : ''})`);
      throw this.dead;
    }
  }

  /** Marks the stream dead with err (e.g. a failure in a later stage), so that later calls throw it. */
  kill(err: PhaulError): void {
    this.dead ??= err;
  }
}

function toBatch(f: Frame, data: Buffer): PageBatch {
  const h = f.header;
  return { pid: h.pid, round: h.round, ranges: f.ranges, data: h.rawLen ? data : EMPTY };
}

/** Synchronous decoder: push socket chunks, get complete PageBatches (lz4 decompressed on this thread). */
export class BatchDecoder {
  private readonly s = new FrameSplitter();

  get buffered(): number {
    return this.s.buffered;
  }

  get count(): number {
    return this.s.count;
  }

  push(chunk: Uint8Array): PageBatch[] {
    const frames = this.s.push(chunk);
    const out: PageBatch[] = new Array(frames.length);
    for (let i = 0; i < frames.length; i++) {
      const f = frames[i];
      try {
        out[i] = toBatch(f, unpackPayload(f.header, f.payload, `page batch #${this.s.count - frames.length + i + 1}`));
      } catch (e) {
        const err = asPhaulError(e, 'protocol');
        this.s.kill(err);
        throw err;
      }
    }
    return out;
  }

  end(): void {
    this.s.end();
  }
}

export interface AttachOptions {
  /** Pause the socket while this many batches are decoding or in onBatch (default 4). */
  window?: number;
  /** ... or while their data adds up to this many bytes (default 64 MiB). */
  windowBytes?: number;
  /** Where payloads spanning socket chunks are assembled (default: a pool of `window` 4 MiB buffers). */
  pool?: BufferPool;
}

export interface BatchStreamStats {
  batches: number;
  /** Bytes received on the wire. */
  wireBytes: number;
  /** Page data delivered (after decompression). */
  rawBytes: number;
}

export interface BatchStreamHandle {
  /**
   * Resolves when the peer ended the stream at a batch boundary and every
   * onBatch has resolved; rejects (once) with the first error. Also reported
   * to onError when given; either way the caller closes the socket.
   */
  readonly done: Promise<BatchStreamStats>;
  readonly stats: BatchStreamStats;
}

/**
 * Feeds a data connection into onBatch, in arrival order. lz4 payloads are
 * decompressed on libuv's thread pool, so parallel connections use several
 * cores and the event loop stays free; onBatch calls may overlap (up to the
 * window), each gets the batch after all earlier ones were handed over.
 * Backpressure: while `window` batches (or `windowBytes` of data) are
 * decoding or awaiting onBatch, the socket is paused, so TCP flow control
 * slows the sender instead of us buffering.
 *
 * The first failure (bad data, a truncated stream, a socket error or close,
 * onBatch rejecting) stops delivery, pauses the socket and is reported once:
 * to onError and as done's rejection. Call on a socket whose data nobody has
 * read (it resumes a socket that was paused, e.g. by FrameConn.detach); no
 * setEncoding.
 */
export function attachBatchStream(
  socket: Readable,
  onBatch: (b: PageBatch) => Promise<void>,
  onError?: (err: PhaulError) => void,
  opts: AttachOptions = {},
): BatchStreamHandle {
  const window = Math.max(1, opts.window ?? 4);
  const windowBytes = Math.max(1, opts.windowBytes ?? 64 * 1024 * 1024);
  const pool = opts.pool ?? new BufferPool(4 << 20, window);
  const splitter = new FrameSplitter(pool);
  const stats: BatchStreamStats = { batches: 0, wireBytes: 0, rawBytes: 0 };
  // Batches cut from the stream, in order, until handed to onBatch.
  const queue: Array<{ frame: Frame; data?: Buffer }> = [];
  let pending = 0;        // batches between arrival and onBatch settling
  let pendingBytes = 0;
  let paused = false;
  let ended = false;
  let failed = false;
  let settled = false;    // done resolved or rejected
  let resolve!: (s: BatchStreamStats) => void;
  let reject!: (e: PhaulError) => void;
  const done = new Promise<BatchStreamStats>((res, rej) => { resolve = res; reject = rej; });
  // A caller that only uses onError must not get an unhandled rejection.
  if (onError) done.catch(() => {});

  const flow = () => {
    if (failed) return;
    const full = pending >= window || pendingBytes >= windowBytes;
    if (full && !paused) { paused = true; socket.pause(); }
    else if (!full && paused) { paused = false; socket.resume(); }
  };

  const finishIfDone = () => {
    if (!settled && ended && pending === 0) { settled = true; cleanup(); resolve(stats); }
  };

  const fail = (e: unknown) => {
    if (settled) return;
    settled = failed = true;
    const err = asPhaulError(e, 'protocol');
    splitter.kill(err);
    cleanup();
    socket.pause();
    queue.length = 0;
    reject(err);
    onError?.(err);
  };

  const settle = (bytes: number) => {
    pending--;
    pendingBytes -= bytes;
    stats.batches++;
    stats.rawBytes += bytes;
    flow();
    finishIfDone();
  };

  // Hands decoded batches to onBatch strictly in arrival order.
  const deliver = () => {
    while (!failed && queue.length && queue[0].data) {
      const { frame, data } = queue.shift()!;
      const bytes = frame.header.rawLen;
      let p: Promise<void>;
      try {
        p = Promise.resolve(onBatch(toBatch(frame, data!)));
      } catch (e) {
        p = Promise.reject(e);
      }
      // onBatch failing is a local failure (store, disk) unless it says otherwise.
      // The data is the store's until onBatch settles; then its pool buffer (raw batches) is free again.
      const free = () => { if (!frame.header.lz4 && frame.pooled) pool.release(frame.pooled); };
      p.then(() => { free(); if (!failed) settle(bytes); }, (e) => { free(); fail(asPhaulError(e, 'failed')); });
    }
  };

  const onData = (chunk: Buffer) => {
    if (failed) return;
    let frames: Frame[];
    try {
      frames = splitter.push(chunk);
    } catch (e) {
      return fail(e);
    }
    for (let i = 0; i < frames.length; i++) {
      const frame = frames[i];
      const entry: { frame: Frame; data?: Buffer } = { frame };
      queue.push(entry);
      pending++;
      pendingBytes += frame.header.rawLen;
      stats.wireBytes += frame.wireBytes;
      const what = `page batch #${splitter.count - frames.length + i + 1}`;
      if (!frame.header.lz4) entry.data = frame.payload;
      else {
        const free = () => { if (frame.pooled) pool.release(frame.pooled); };
        unpackPayloadAsync(frame.header, frame.payload, what).then((d) => { free(); entry.data = d; deliver(); }, (e) => { free(); fail(e); });
      }
    }
    deliver();
    flow();
  };

  const onEnd = () => {
    try {
      splitter.end();
    } catch (e) {
      return fail(e);
    }
    ended = true;
    finishIfDone();
  };
  const onSocketError = (e: Error) => fail(new PhaulError('network', `data connection failed: ${e.message}`));
  const onClose = () => { if (!ended) fail(new PhaulError('network', 'data connection closed before the end of the stream')); };

  // The error listener stays: a socket error after we are done must not become
  // an uncaught exception (fail ignores it then).
  function cleanup() {
    socket.off('data', onData);
    socket.off('end', onEnd);
    socket.off('close', onClose);
  }

  socket.on('data', onData);
  socket.on('end', onEnd);
  socket.on('error', onSocketError);
  socket.on('close', onClose);
  socket.resume();
  return { done, stats };
}

/** Where a data connection's batches go (PageStore has both). */
export interface BatchSink {
  /** A batch whose data is in memory (read over TLS, or decompressed). */
  write(b: PageBatch): Promise<void>;
  /**
   * A raw batch whose data is still on the connection: `pull` reads it into
   * place (PageStore.receive). Without it, raw payloads are read into memory
   * and given to write().
   */
  receive?(b: IncomingBatch, pull: PayloadPull): Promise<void>;
}

/** A native call's rejection as a PhaulError: the connection's fault, or ours ('failed': e.g. the store's file). */
function nativeError(e: unknown): PhaulError {
  const msg = (e as Error)?.message ?? String(e);
  const reason = (e as { reason?: string })?.reason;
  if (reason === 'failed' || reason === 'protocol') return new PhaulError(reason, msg);
  return new PhaulError('network', `data connection failed: ${msg}`);
}

/**
 * attachBatchStream for a plain TCP data connection taken out of Node (its
 * descriptor owned by a native BatchConn, native/batch_io.cc). The header and
 * ranges come to JS and are checked here as on the JS path; the sink plans
 * where the pages go, and a raw batch's payload then goes from the socket
 * straight into the store's files on a libuv thread (receivePayload: no JS
 * buffer, no JS per page). lz4 payloads are read into memory and decompressed.
 * Same contract as attachBatchStream: batches reach the sink in arrival
 * order, at most `window` at once; the first failure is reported once;
 * `done` resolves when the peer ended at a batch boundary.
 */
export function attachNativeBatchStream(
  conn: NativeBatchConn,
  sink: BatchSink,
  onError?: (err: PhaulError) => void,
  opts: AttachOptions = {},
): BatchStreamHandle {
  const window = Math.max(1, opts.window ?? 4);
  const stats: BatchStreamStats = { batches: 0, wireBytes: 0, rawBytes: 0 };
  let pool: BufferPool | undefined;
  let failed: PhaulError | undefined;
  const inflight = new Set<Promise<void>>();
  const fail = (e: unknown): PhaulError => {
    if (!failed) {
      failed = asPhaulError(e, 'protocol');
      conn.abort();
      onError?.(failed);
    }
    return failed;
  };
  const track = (p: Promise<void>, raw: number) => {
    const q: Promise<void> = p
      .then(() => { stats.batches++; stats.rawBytes += raw; }, (e) => { fail(asPhaulError(e, 'failed')); })
      .finally(() => { inflight.delete(q); });
    inflight.add(q);
  };
  const run = async (): Promise<BatchStreamStats> => {
    for (let n = 1; !failed; n++) {
      while (inflight.size >= window) await Promise.race(inflight);
      if (failed) break;
      const what = `page batch #${n}`;
      let head: BatchHeader;
      let ranges: PageRange[];
      try {
        const r = await conn.read(EMPTY).catch((e) => { throw nativeError(e); });
        if (r.end) break;
        head = parseHeader(r.head, what);
        if (!r.ranges) throw new PhaulError('protocol', `${what}: header out of bounds`);
        ranges = parseRanges(head, r.ranges, what);
        stats.wireBytes += HEADER_SIZE + head.nranges * RANGE_SIZE + head.payloadLen;
      } catch (e) {
        throw fail(e);
      }
      const { pid, round, rawLen } = head;
      const receive = sink.receive?.bind(sink);
      if (head.lz4 || !receive) {
        // Into memory: a pooled buffer when it is big and fits (POOLED_PAYLOAD_MIN), else one of its own.
        pool ??= opts.pool ?? new BufferPool(4 << 20, window + 1);
        const buf = head.payloadLen >= POOLED_PAYLOAD_MIN && head.payloadLen <= pool.size ? await pool.acquire() : undefined;
        let data: Buffer;
        try {
          const payload = buf ? buf.subarray(0, head.payloadLen) : Buffer.allocUnsafe(head.payloadLen);
          await conn.readPayload(payload, head.payloadLen).catch((e) => { throw nativeError(e); });
          data = rawLen ? await unpackPayloadAsync(head, payload, what) : EMPTY;
        } catch (e) {
          if (buf) pool.release(buf);
          throw fail(e);
        }
        // A raw payload is the data: its buffer is the sink's until write() settles.
        const held = buf && data.buffer === buf.buffer ? buf : undefined;
        if (buf && !held) pool.release(buf);
        track(Promise.resolve().then(() => sink.write({ pid, round, ranges, data })).finally(() => { if (held) pool!.release(held); }), rawLen);
        continue;
      }
      // The next header is read once this payload is off the connection.
      let drained!: () => void;
      const offWire = new Promise<void>((r) => { drained = r; });
      const pull: PayloadPull = (plan) => conn.receivePayload(plan).catch((e) => { throw nativeError(e); }).finally(drained);
      track(Promise.resolve().then(() => receive({ pid, round, ranges, dataBytes: rawLen }, pull)).finally(drained), rawLen);
      await offWire;
    }
    await Promise.all(inflight);
    if (failed) throw failed;
    return stats;
  };
  const done = run();
  if (onError) done.catch(() => {});
  return { done, stats };
}
