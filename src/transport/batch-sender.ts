// The sending end of pre-copy's data connections: batches go out round-robin
// over N connections, at most --max-bandwidth. Over plain TCP each connection
// is a native BatchConn (native/batch_io.cc): a batch of pages is read from
// the workload and written to the socket on a libuv thread, from a buffer
// used again and again, its bytes never in JS. Over TLS the connections stay
// Node sockets and JS writes what it read (src/agent/precopy.ts).
import type { Socket } from 'node:net';
import { PhaulError, asPhaulError } from '../errors';
import type { NativeBatchConn } from '../native';
import { fromNative } from '../memory/errors';
import { BufferPool } from './buffer-pool';

interface Lane {
  conn?: NativeBatchConn;
  sock?: Socket;
  /** The native connection's call in flight (one at a time). */
  busy: Promise<void>;
}

export class BatchSender {
  private readonly lanes: Lane[];
  private next = 0;
  private capStart = 0;
  private capBytes = 0;
  bytesSent = 0;
  /** Batches written whole so far: what the destination will count. */
  batchesWritten = 0;
  /** Pages that could not be read, so were not sent (unmapped since the scan). */
  missingPages = 0;

  /**
   * natives: the connections taken over by BatchConns (data-channel.ts
   * nativeBatchConns), else the sockets are written by Node. `ended()` says
   * the destination gave up the session: nothing would be read any more.
   */
  constructor(socks: Socket[], natives: NativeBatchConn[] | undefined, private readonly ended: () => boolean,
    private readonly maxBandwidthBps?: number) {
    this.lanes = natives ? natives.map((conn) => ({ conn, busy: Promise.resolve() })) : socks.map((sock) => ({ sock, busy: Promise.resolve() }));
  }

  /** How many connections the batches share. */
  get width(): number {
    return this.lanes.length;
  }

  /** Whether batches of pages can go without JS reading them (sendPages). */
  get native(): boolean {
    return !!this.lanes[0]?.conn;
  }

  /** Holds the stream to --max-bandwidth: sleep until the bytes sent fit the rate. */
  private async pace(bytes: number): Promise<void> {
    const cap = this.maxBandwidthBps;
    if (!cap) return;
    const now = Date.now();
    if (!this.capStart) this.capStart = now;
    this.capBytes += bytes;
    const due = this.capStart + (this.capBytes / cap) * 1000;
    if (due > now) await new Promise((r) => setTimeout(r, due - now));
  }

  /** Waits for p, giving up the connections when the destination ended the session. */
  private async settle(p: Promise<void>): Promise<void> {
    const watch = setInterval(() => { if (this.ended()) this.abort(); }, 200);
    try {
      await p;
    } finally {
      clearInterval(watch);
    }
  }

  /** Queues work on a native lane after its previous call; failures surface at the next settle. */
  private queue(lane: Lane, work: () => Promise<void>): void {
    const p = lane.busy.then(work);
    p.catch(() => undefined);
    lane.busy = p;
  }

  /**
   * pid's `pairs` as raw batches of at most the pool's buffer size, read by
   * the native connection into a buffer of `pool` and written one after the
   * other (one call for all of them), the buffer given back once the last is
   * written. Resolves when queued: at most one call per connection is in
   * flight. With `goneIsSkipped`, a process gone before its pages were read
   * (a pre-copy child that exited since the scan) is no failure: the batches
   * written before it count in batchesWritten, the one it stopped did not go
   * out (the read comes first). Failing the lane instead would surface at its
   * next call, for another process or at a flush. Pages that could not be
   * read (unmapped since the scan) are not sent; with `missingFails` (a
   * frozen process, whose pages must all be there) they fail the lane.
   */
  async sendPages(pid: number, round: number, pairs: BigUint64Array, bytes: number, pool: BufferPool,
    opts: { goneIsSkipped?: boolean; missingFails?: boolean } = {}): Promise<void> {
    await this.pace(bytes);
    const lane = this.lanes[this.next++ % this.lanes.length];
    await this.settle(lane.busy);
    const buf = await pool.acquire();
    this.queue(lane, () => lane.conn!.sendPages(pid, round, pairs, buf).then(
      (r) => {
        this.bytesSent += r.wireBytes;
        this.batchesWritten += r.batches;
        this.missingPages += r.missingPages;
        if (r.missingPages && opts.missingFails) {
          throw new PhaulError('failed', `pid ${pid}: ${r.missingPages} of its pages could not be read (unmapped while it was stopped?)`);
        }
      },
      (e) => {
        this.batchesWritten += Number((e as { batches?: number })?.batches) || 0;
        if (opts.goneIsSkipped && (e as { reason?: string })?.reason === 'process-gone') return;
        throw laneError(e, pid);
      },
    ).finally(() => pool.release(buf)));
  }

  /** One batch as JS encoded it, to the next connection; `written` runs once its buffers are free again. */
  async sendBuffers(buffers: Buffer[], written?: () => void): Promise<void> {
    const n = buffers.reduce((k, b) => k + b.length, 0);
    await this.pace(n);
    const lane = this.lanes[this.next++ % this.lanes.length];
    if (lane.conn) {
      await this.settle(lane.busy);
      this.queue(lane, () => lane.conn!.sendBuffers(buffers).then(
        () => {
          this.bytesSent += n;
          this.batchesWritten++;
        },
        (e) => { throw laneError(e, 0); },
      ).finally(() => written?.()));
      return;
    }
    const s = lane.sock!;
    this.batchesWritten++; // handed to the socket whole: it goes out unless the connection fails
    let ok = true;
    for (let i = 0; i < buffers.length; i++) {
      const b = buffers[i];
      ok = (i === buffers.length - 1 && written ? s.write(b, () => written()) : s.write(b)) && ok;
      this.bytesSent += b.length;
    }
    if (!ok) {
      // Waits for the stream to drain; gives up when it errs or closes, or when
      // the control connection is gone (the destination failed the session and
      // stopped reading: nothing would ever drain).
      await new Promise<void>((resolve, reject) => {
        const done = (e?: Error) => {
          clearInterval(watch);
          s.off('error', onErr);
          s.off('close', onClose);
          s.off('drain', onDrain);
          if (e) reject(asPhaulError(e, 'network'));
          else resolve();
        };
        const onErr = (e: Error) => done(e);
        const onClose = () => done(new PhaulError('network', 'a data connection to the destination closed'));
        const onDrain = () => done();
        const watch = setInterval(() => {
          if (this.ended()) done(new PhaulError('network', 'the destination ended the session'));
        }, 200);
        s.on('error', onErr);
        s.on('close', onClose);
        s.on('drain', onDrain);
      });
    }
  }

  /** Waits until every batch handed over is written (native connections); throws the first failure. */
  async flush(): Promise<void> {
    for (const lane of this.lanes) await this.settle(lane.busy);
  }

  /** A call blocked on the destination fails now. */
  abort(): void {
    for (const lane of this.lanes) lane.conn?.abort();
  }

  close(): void {
    for (const lane of this.lanes) {
      lane.conn?.close();
      lane.sock?.destroy();
    }
  }
}

function laneError(e: unknown, pid: number): PhaulError {
  const reason = (e as { reason?: string })?.reason;
  if (reason === 'process-gone' && pid > 0) return fromNative(e, pid);
  const msg = (e as Error)?.message ?? String(e);
  if (reason === 'network') return new PhaulError('network', msg === 'data connection aborted' ? 'the destination ended the session' : msg);
  return new PhaulError('failed', msg);
}
