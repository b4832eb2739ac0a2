// The control channel's framing: a u32 big-endian length, then one msgpack
// message (an object whose `t` names its type). After authentication every
// frame also carries a MAC over its sequence number and body (`protect`), so
// an on-path attacker can neither inject, drop, reorder nor replay a frame.
// Nothing a peer sends is trusted: oversized frames (a few KiB before
// authentication), non-objects, messages without a string `t` and frames that
// fail their MAC end the connection with a protocol error. A frame that
// decodes is then checked by the one message validator (messages.ts): a
// message of an unknown type or with a bad field is refused on its own (`next`
// rejects), so the receiver can still tell the peer why before it closes.
import * as crypto from 'node:crypto';
import type { Duplex } from 'node:stream';
// The pure JavaScript build: the main entry also loads msgpackr-extract,
// whose loader probes the C library (~15 ms of CPU at every start of an agent,
// counted in every migration's cost) to speed up decoding strings, which
// control frames are too small to need.
import { Packr, Unpackr } from 'msgpackr/index-no-eval';
import { asPhaulError, PhaulError } from '../errors';
import { parseMessage, type Message, type MessageOf, type MessageType } from './messages';

export type { Message, MessageOf, MessageType };

/** Largest frame from an authenticated peer (images travel in 16 MiB chunks). */
export const MAX_FRAME = 64 * 1024 * 1024;
/** Largest frame, and most unread bytes, from a peer that has not authenticated yet. */
export const MAX_UNAUTH_FRAME = 4096;
export const MAX_UNAUTH_BUFFERED = 4 * MAX_UNAUTH_FRAME;
/** Unread frames from an authenticated peer past which we stop reading its socket. */
const READ_AHEAD_BYTES = 2 * MAX_FRAME;
/** HMAC-SHA256 truncated to 128 bits. */
export const TAG_BYTES = 16;

/** A decoded frame before validation: an object with a string `t`. */
interface RawMessage {
  t: string;
  [k: string]: unknown;
}

const packr = new Packr({ useRecords: false });
const unpackr = new Unpackr({ useRecords: false });

/** A frame without a MAC (before authentication, and in tests). */
export function encodeFrame(msg: Message | RawMessage): Buffer {
  const body = packr.pack(msg);
  const head = Buffer.allocUnsafe(4);
  head.writeUInt32BE(body.length, 0);
  return Buffer.concat([head, body]);
}

/** Directional keys of an authenticated connection (src/protocol/auth.ts). */
export interface FrameKeys {
  send: Buffer;
  receive: Buffer;
}

function tag(key: Buffer, seq: bigint, body: Buffer | Buffer[]): Buffer {
  const s = Buffer.allocUnsafe(8);
  s.writeBigUInt64BE(seq);
  const h = crypto.createHmac('sha256', key).update(s);
  for (const b of Array.isArray(body) ? body : [body]) h.update(b);
  return h.digest().subarray(0, TAG_BYTES);
}
const EMPTY = Buffer.alloc(0);

/**
 * Splits a byte stream into frame bodies. Chunks are kept as they come and
 * copied once, when a whole frame is there: a large frame costs its size in
 * memory and one copy, not one concatenation per chunk.
 */
export class FrameSplitter {
  private chunks: Buffer[] = [];
  private have = 0;

  constructor(public limit: number, private readonly peer = 'peer') {}

  get buffered(): number {
    return this.have;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.have += chunk.length;
  }

  /** The next whole frame's body, undefined if it has not all arrived; throws on an oversized length. */
  next(): Buffer | undefined {
    if (this.have < 4) return undefined;
    const len = this.peekLength();
    if (len > this.limit) throw new PhaulError('protocol', `${this.peer} sent a ${len}-byte frame (limit ${this.limit})`);
    if (this.have < 4 + len) return undefined;
    return this.take(4 + len).subarray(4);
  }

  private peekLength(): number {
    const first = this.chunks[0];
    if (first.length >= 4) return first.readUInt32BE(0);
    const head = Buffer.allocUnsafe(4);
    let got = 0;
    for (const c of this.chunks) {
      got += c.copy(head, got, 0, Math.min(c.length, 4 - got));
      if (got === 4) break;
    }
    return head.readUInt32BE(0);
  }

  private take(n: number): Buffer {
    this.have -= n;
    const first = this.chunks[0];
    if (first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let got = 0;
    while (got < n) {
      const c = this.chunks[0];
      const k = Math.min(c.length, n - got);
      c.copy(out, got, 0, k);
      got += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    return out;
  }
}

/** A message connection over any byte stream (TCP or TLS). */
export class FrameConn {
  readonly socket: Duplex;
  private readonly splitter: FrameSplitter;
  /** Whole frames not yet asked for, undecoded: a MAC check applies to them once `protect` is called. */
  private frames: Buffer[] = [];
  private framedBytes = 0;
  private paused = false;
  private waiters: { resolve: (m: RawMessage) => void; reject: (e: Error) => void }[] = [];
  private failure: PhaulError | undefined;
  private detached = false;
  private keys?: FrameKeys;
  private sendSeq = 0n;
  private receiveSeq = 0n;

  constructor(socket: Duplex, readonly peer = 'peer') {
    this.socket = socket;
    this.splitter = new FrameSplitter(MAX_UNAUTH_FRAME, peer);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (e) => this.fail(new PhaulError('network', `connection to ${peer} failed: ${e.message}`)));
    socket.on('close', () => this.fail(new PhaulError('network', `connection to ${peer} closed`)));
  }

  /** From now on every frame, both ways, carries a MAC with these keys; frames may be MAX_FRAME. */
  protect(keys: FrameKeys): void {
    this.keys = keys;
    this.splitter.limit = MAX_FRAME;
  }

  /**
   * A key for something else this connection carries (e.g. page batches
   * after detach), derived from the frame key of one direction: the client's
   * 'send' key is the server's 'receive' key. Undefined before protect().
   */
  subkey(label: string, direction: 'send' | 'receive'): Buffer | undefined {
    const k = this.keys?.[direction];
    return k && crypto.createHmac('sha256', k).update(`phaul-fast ${label}`).digest();
  }

  get authenticated(): boolean {
    return this.keys !== undefined;
  }

  private onData(chunk: Buffer): void {
    if (this.detached || this.failure) return;
    this.splitter.push(chunk);
    try {
      for (let body = this.splitter.next(); body; body = this.splitter.next()) {
        if (this.waiters.length) {
          const m = this.decode(body); // a throw leaves the waiter to abort() to reject
          this.waiters.shift()!.resolve(m);
        } else {
          this.frames.push(body);
          this.framedBytes += body.length;
        }
      }
      if (!this.keys && this.framedBytes + this.splitter.buffered > MAX_UNAUTH_BUFFERED)
        throw new PhaulError('protocol', `${this.peer} sent more than ${MAX_UNAUTH_BUFFERED} bytes before authenticating`);
    } catch (e) {
      this.abort(e);
      return;
    }
    if (this.framedBytes > READ_AHEAD_BYTES && !this.paused) {
      this.paused = true;
      this.socket.pause();
    }
  }

  private decode(frame: Buffer): RawMessage {
    let body = frame;
    if (this.keys) {
      body = frame.subarray(0, Math.max(0, frame.length - TAG_BYTES));
      const want = tag(this.keys.receive, this.receiveSeq, body);
      if (frame.length < TAG_BYTES || !crypto.timingSafeEqual(want, frame.subarray(frame.length - TAG_BYTES)))
        throw new PhaulError('protocol', `${this.peer} sent a frame that fails its integrity check (altered, replayed or injected on the way)`);
      this.receiveSeq++;
    }
    let msg: unknown;
    try {
      msg = unpackr.unpack(body);
    } catch {
      msg = undefined;
    }
    if (!msg || typeof msg !== 'object' || typeof (msg as RawMessage).t !== 'string')
      throw new PhaulError('protocol', `${this.peer} sent a malformed message`);
    return msg as RawMessage;
  }

  /** Ends the connection for something the peer sent. */
  private abort(e: unknown): void {
    this.fail(asPhaulError(e, 'protocol'));
    this.socket.destroy();
  }

  private fail(e: PhaulError): void {
    if (this.failure) return;
    // The peer said why before it closed (an `error` frame nobody asked for
    // yet): that is the connection's failure, not the close.
    for (const f of this.frames) {
      try {
        const m = parseMessage(this.decode(f));
        if (m.t === 'error') { e = new PhaulError(m.code, `${this.peer}: ${m.message}`); break; }
      } catch {
        break;
      }
    }
    this.failure = e;
    this.frames = [];
    this.framedBytes = 0;
    for (const w of this.waiters.splice(0)) w.reject(e);
  }

  get closed(): boolean {
    return this.failure !== undefined;
  }

  /**
   * Why the peer ended the connection, if it said so: its `error` message, up
   * to waitMs from now. A failure elsewhere (say, a data connection reset) is
   * often the echo of the peer giving up; its own reason says more. Consumes
   * the next message when it is something else.
   */
  async peerReason(waitMs: number): Promise<PhaulError | undefined> {
    try {
      const m = await this.next(waitMs);
      return m.t === 'error' ? new PhaulError(m.code, `${this.peer}: ${m.message}`) : undefined;
    } catch (e) {
      const f = this.failure;
      return f && f.code !== 'network' && f === e ? f : undefined;
    }
  }

  send(msg: Message): void {
    this.write([packr.pack(msg)]);
  }

  /**
   * Sends `msg` with its Buffer field `data` written straight from the caller's memory instead
   * of copied into the encoded body (it decodes to the same message as send()'s frame). Resolves once the
   * socket has handed every byte to the kernel: only then may the caller reuse `data`.
   * For large payloads inside the pause, where copying into fresh memory costs far more than the
   * bytes' transfer (docs/BENCH.md, "Where hybrid's pause goes").
   */
  sendWithData<M extends Message & { data: Buffer }>(msg: M): Promise<void> {
    const { data, ...rest } = msg;
    // `data` encoded last and empty (bin8, length 0), then given its real bin32 header.
    const head = packr.pack({ ...rest, data: EMPTY });
    if (head.length < 2 || head[head.length - 2] !== 0xc4 || head[head.length - 1] !== 0) throw new PhaulError('failed', 'frame: cannot place a payload after this message');
    const prefix = Buffer.allocUnsafe(head.length - 2 + 5);
    head.copy(prefix, 0, 0, head.length - 2);
    prefix[head.length - 2] = 0xc6;
    prefix.writeUInt32BE(data.length, head.length - 1);
    return new Promise((resolve, reject) => this.write([prefix, data], (e) => (e ? reject(asPhaulError(e, 'network')) : resolve())));
  }

  /** One frame of body `parts`, with its MAC once authenticated. */
  private write(parts: Buffer[], done?: (e?: Error | null) => void): void {
    if (this.failure) throw this.failure;
    const len = parts.reduce((n, b) => n + b.length, 0);
    const head = Buffer.allocUnsafe(4);
    if (!this.keys) {
      head.writeUInt32BE(len, 0);
      this.socket.write(Buffer.concat([head, ...parts]), done);
      return;
    }
    head.writeUInt32BE(len + TAG_BYTES, 0);
    const mac = tag(this.keys.send, this.sendSeq++, parts);
    // One writev, now: uncorking on the next tick let a caller that logs right
    // after send() ("running as pid N") be seen, and killed, before the frame
    // left (the source then saw no `running` and reported the workload lost).
    this.socket.cork();
    this.socket.write(head);
    for (const b of parts) this.socket.write(b);
    this.socket.write(mac, done);
    this.socket.uncork();
  }

  /** Waits for the next message; rejects on close, error or timeout, and for a message the validator refuses. */
  async next(timeoutMs = 30_000): Promise<Message> {
    return parseMessage(await this.nextFrame(timeoutMs));
  }

  private nextFrame(timeoutMs: number): Promise<RawMessage> {
    const queued = this.frames.shift();
    if (queued) {
      this.framedBytes -= queued.length;
      if (this.paused && this.framedBytes <= READ_AHEAD_BYTES / 2 && !this.detached) {
        this.paused = false;
        this.socket.resume();
      }
      try {
        return Promise.resolve(this.decode(queued));
      } catch (e) {
        this.abort(e);
        return Promise.reject(e);
      }
    }
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const i = this.waiters.indexOf(w);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new PhaulError('network', `${this.peer} did not answer within ${Math.round(timeoutMs / 1000)} s`));
      }, timeoutMs);
      const w = {
        resolve: (m: RawMessage) => { clearTimeout(timer); resolve(m); },
        reject: (e: Error) => { clearTimeout(timer); reject(e); },
      };
      this.waiters.push(w);
    });
  }

  /** Waits for a message of type `t`; an `error` message from the peer becomes a thrown error. */
  async expect<T extends MessageType>(t: T, timeoutMs?: number): Promise<MessageOf<T>> {
    const m = await this.next(timeoutMs);
    if (m.t === t) return m as MessageOf<T>;
    if (m.t === 'error') throw new PhaulError(m.code, `${this.peer}: ${m.message}`);
    throw new PhaulError('protocol', `${this.peer} sent '${m.t}' where '${t}' was expected`);
  }

  /** Stops reading so the raw descriptor can be handed over (`raw`), or so the
   *  stream can be piped elsewhere (TLS: bytes read meanwhile stay in the
   *  stream's buffer and flow on). Fails if the peer sent bytes past its last
   *  frame, which our protocol never does. */
  detach(raw: boolean): void {
    this.detached = true;
    this.socket.pause();
    if (raw) {
      const h = (this.socket as unknown as { _handle?: { readStop?: () => void } })._handle;
      h?.readStop?.();
    }
    if (this.splitter.buffered || this.frames.length) throw new PhaulError('protocol', `${this.peer} sent data before it was asked to`);
  }

  close(): void {
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }
}

/** A field of a validated message by name (for readers written before messages.ts typed them). */
function field(m: Message, k: string): unknown {
  return (m as unknown as Record<string, unknown>)[k];
}

/** Reads a string field of a peer message, bounded in length. */
export function str(m: Message, k: string, max = 4096): string {
  const v = field(m, k);
  if (typeof v !== 'string' || v.length > max) throw new PhaulError('protocol', `message '${m.t}' has a bad '${k}'`);
  return v;
}

/** Reads an integer field of a peer message within [min, max]. */
export function int(m: Message, k: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const v = field(m, k);
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max)
    throw new PhaulError('protocol', `message '${m.t}' has a bad '${k}'`);
  return v;
}

export function bin(m: Message, k: string, max = MAX_FRAME): Buffer {
  const v = field(m, k);
  if (!(v instanceof Uint8Array) || v.length > max) throw new PhaulError('protocol', `message '${m.t}' has a bad '${k}'`);
  return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
}
