// The control channel's framing: a u32 big-endian length, then one msgpack
// message (an object whose `t` names its type). Nothing a peer sends is
// trusted: frames over MAX_FRAME, non-objects and messages without a string `t`
// end the connection with a protocol error. A frame that decodes is then
// checked by the one message validator (messages.ts): a message of an unknown
// type or with a bad field is refused on its own (`next` rejects), so the
// receiver can still tell the peer why before it closes.
import type { Duplex } from 'node:stream';
import { Packr, Unpackr } from 'msgpackr';
import { PhaulError } from '../errors';
import { parseMessage, type Message, type MessageOf, type MessageType } from './messages';

export type { Message, MessageOf, MessageType };

export const MAX_FRAME = 64 * 1024 * 1024;

/** A decoded frame before validation: an object with a string `t`. */
interface RawMessage {
  t: string;
  [k: string]: unknown;
}

const packr = new Packr({ useRecords: false });
const unpackr = new Unpackr({ useRecords: false });

export function encodeFrame(msg: Message | RawMessage): Buffer {
  const body = packr.pack(msg);
  const head = Buffer.allocUnsafe(4);
  head.writeUInt32BE(body.length, 0);
  return Buffer.concat([head, body]);
}

/** A message connection over any byte stream (TCP or TLS). */
export class FrameConn {
  readonly socket: Duplex;
  private buf: Buffer = Buffer.alloc(0);
  private queue: RawMessage[] = [];
  private waiters: { resolve: (m: RawMessage) => void; reject: (e: Error) => void }[] = [];
  private failure: PhaulError | undefined;
  private detached = false;

  constructor(socket: Duplex, readonly peer = 'peer') {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (e) => this.fail(new PhaulError('network', `connection to ${peer} failed: ${e.message}`)));
    socket.on('close', () => this.fail(new PhaulError('network', `connection to ${peer} closed`)));
  }

  private onData(chunk: Buffer): void {
    if (this.detached) return;
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    while (this.buf.length >= 4) {
      const len = this.buf.readUInt32BE(0);
      if (len > MAX_FRAME) {
        this.fail(new PhaulError('protocol', `${this.peer} sent a ${len}-byte frame (limit ${MAX_FRAME})`));
        this.socket.destroy();
        return;
      }
      if (this.buf.length < 4 + len) return;
      const body = this.buf.subarray(4, 4 + len);
      this.buf = this.buf.subarray(4 + len);
      let msg: unknown;
      try {
        msg = unpackr.unpack(body);
      } catch {
        msg = undefined;
      }
      if (!msg || typeof msg !== 'object' || typeof (msg as RawMessage).t !== 'string') {
        this.fail(new PhaulError('protocol', `${this.peer} sent a malformed message`));
        this.socket.destroy();
        return;
      }
      const w = this.waiters.shift();
      if (w) w.resolve(msg as RawMessage);
      else this.queue.push(msg as RawMessage);
    }
  }

  private fail(e: PhaulError): void {
    if (this.failure) return;
    this.failure = e;
    for (const w of this.waiters.splice(0)) w.reject(e);
  }

  get closed(): boolean {
    return this.failure !== undefined;
  }

  send(msg: Message): void {
    if (this.failure) throw this.failure;
    this.socket.write(encodeFrame(msg));
  }

  /** Waits for the next message; rejects on close, error or timeout, and for a message the validator refuses. */
  async next(timeoutMs = 30_000): Promise<Message> {
    return parseMessage(await this.nextFrame(timeoutMs));
  }

  private nextFrame(timeoutMs: number): Promise<RawMessage> {
    const queued = this.queue.shift();
    if (queued) return Promise.resolve(queued);
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
    if (this.buf.length || this.queue.length) throw new PhaulError('protocol', `${this.peer} sent data before it was asked to`);
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
