// What the benchmark's text-protocol clients share (mc-client.ts for
// memcached, redis-agent.ts for Redis's RESP): a TCP connection read as CRLF
// lines and counted bytes, connecting with retries, and a client loop paced
// to a write rate.
import * as net from 'node:net';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
export const now = () => performance.timeOrigin + performance.now();

export class LineConn {
  private buf: Buffer = Buffer.alloc(0);
  private waiters: Array<() => void> = [];
  private closed: Error | null = null;

  private constructor(private readonly sock: net.Socket) {
    sock.on('data', (d) => { this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d; this.wake(); });
    sock.on('error', (e) => { this.closed = e; this.wake(); });
    sock.on('close', () => { this.closed ??= new Error('connection closed'); this.wake(); });
  }

  static connect(host: string, port: number, timeoutMs = 2_000): Promise<LineConn> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ host, port });
      const t = setTimeout(() => { s.destroy(); reject(new Error(`connect ${host}:${port} timed out`)); }, timeoutMs);
      s.once('connect', () => { clearTimeout(t); s.setNoDelay(true); resolve(new LineConn(s)); });
      s.once('error', (e) => { clearTimeout(t); reject(e); });
    });
  }

  private wake() {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  private async need(pred: () => number): Promise<number> {
    for (;;) {
      const n = pred();
      if (n >= 0) return n;
      if (this.closed) throw this.closed;
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }

  /** The next line, without its CRLF. */
  async line(): Promise<string> {
    const i = await this.need(() => this.buf.indexOf('\r\n'));
    const l = this.buf.subarray(0, i).toString('latin1');
    this.buf = this.buf.subarray(i + 2);
    return l;
  }

  /** The next `len` bytes (a copy), then the CRLF that ends them. */
  async block(len: number): Promise<Buffer> {
    await this.need(() => (this.buf.length >= len + 2 ? 0 : -1));
    const v = Buffer.from(this.buf.subarray(0, len));
    this.buf = this.buf.subarray(len + 2);
    return v;
  }

  async write(data: Buffer | string): Promise<void> {
    if (!this.sock.write(data)) await new Promise((r) => this.sock.once('drain', r));
  }

  close(): void {
    this.sock.destroy();
  }
}

/** connect() until it succeeds or timeoutMs has passed (the server may still be starting). */
export interface PacedResult {
  end: string;
  longestStepMs: number;
  /** When the longest wait began (ms since the epoch); 0 if no step ran. */
  longestStepAt: number;
  /** Waits of STALL_MS or more: [began (ms since the epoch), ms]. */
  stalls: Array<[number, number]>;
}

/** A wait this long is a stall worth placing on the migration's timeline (the client steps every ~1 ms). */
export const STALL_MS = 50;
const MAX_STALLS = 32;

export async function connectRetry<T>(connect: () => Promise<T>, timeoutMs: number): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await connect();
    } catch (e) {
      if (Date.now() > end) throw e;
      await sleep(2);
    }
  }
}

/**
 * A busy client: every ~1 ms, `step(n)` with the number of values of `size`
 * bytes due at `mbps` (MB = 10^6 bytes; catching up at most 50 ms after a
 * stall), until SIGTERM or until the connection ends (the migrated server's
 * source is gone). Prints `{"ready":1}` first: the harness starts the
 * migration only after it, since a client stopped before it has its SIGTERM
 * handler would report nothing.
 *
 * Reports its longest wait for one step (request to last reply) and when it
 * began (wall clock, ms since the epoch), and every wait of STALL_MS or more
 * (at most MAX_STALLS, as [began, ms]): placed against the migration's own
 * timeline, they say which of its steps held the server up.
 */
export async function paced(mbps: number, size: number, connect: () => Promise<unknown>, step: (n: number) => Promise<void>):
Promise<PacedResult> {
  let stop = false;
  let stopNow: () => void = () => undefined;
  // A request to a frozen server is never answered: SIGTERM must not wait for it.
  const stopped = new Promise<void>((r) => { stopNow = r; });
  const onTerm = () => { stop = true; stopNow(); };
  process.once('SIGTERM', onTerm);
  await connect();
  process.stdout.write('{"ready":1}\n');
  let credit = 0, prev = now(), longestStepMs = 0, longestStepAt = 0;
  const stalls: Array<[number, number]> = [];
  const result = (end: string): PacedResult => {
    process.off('SIGTERM', onTerm);
    return { end, longestStepMs: Math.round(longestStepMs), longestStepAt: Math.round(longestStepAt), stalls };
  };
  const perMs = (mbps * 1e6) / size / 1000;
  while (!stop) {
    const t = now();
    credit += perMs * Math.min(t - prev, 50);
    prev = t;
    const n = Math.floor(credit);
    credit -= n;
    try {
      await Promise.race([step(n), stopped]);
    } catch (e) {
      // The server closed or reset the connection: its session is over.
      return result((e as Error).message);
    }
    if (stop) break;
    const waited = now() - t;
    if (waited > longestStepMs) { longestStepMs = waited; longestStepAt = t; }
    if (waited >= STALL_MS && stalls.length < MAX_STALLS) stalls.push([Math.round(t), Math.round(waited)]);
    await sleep(1);
  }
  return result('SIGTERM');
}
