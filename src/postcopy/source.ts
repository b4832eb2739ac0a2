// The source side of postcopy (docs/DESIGN.md section 8, Postcopy): once CRIU's lazy
// dump has written its images, every lazy page goes to the destination from
// the frozen (later: stopped) original, by its index in the layout
// (layout.ts). Two lanes: pages the destination asks for (`page-request`,
// a fault waits for them) go on the first data connection, alone, as soon
// as they are asked for; the background push sends everything else, in
// order, on the others. A page goes once: whichever lane takes it first.
import type { Socket } from 'node:net';
import { PhaulError, asPhaulError } from '../errors';
import type { FrameConn } from '../protocol/frames';
import type { Message, MessageOf, MessageType, PageRequest } from '../protocol/messages';
import { readPages } from '../memory/read-pages';
import { PAGE_SIZE } from '../store/pagemap-image';
import { encodeRawHead } from '../transport/page-batch';
import { BatchSender } from '../transport/batch-sender';
import { BufferPool } from '../transport/buffer-pool';
import { nativeBatchConns } from '../agent/data-channel';
import type { PostcopyLayout } from './layout';

/** Pages per batch: 4 MiB. A request is cut to this too. */
const BATCH_PAGES = 1024;

/** One lane: its connection(s), its buffers. */
class Lane {
  readonly out: BatchSender;
  readonly pool: BufferPool;

  constructor(streams: Socket[], ended: () => boolean) {
    this.out = new BatchSender(streams, nativeBatchConns(streams), ended);
    this.pool = new BufferPool(BATCH_PAGES * PAGE_SIZE, 2 * streams.length + 1);
  }

  /** Reads pid's [vaddr, vaddr + pages) and sends it as one batch. */
  async send(pid: number, vaddr: number, pages: number): Promise<void> {
    const pairs = BigUint64Array.of(BigInt(vaddr), BigInt(vaddr + pages * PAGE_SIZE));
    const bytes = pages * PAGE_SIZE;
    if (this.out.native) {
      // The tree is stopped: a page that cannot be read is lost, never sent as zeros.
      await this.out.sendPages(pid, 0, pairs, bytes, this.pool, { missingFails: true });
      return;
    }
    // TLS: read here, written by Node.
    const buf = await this.pool.acquire();
    try {
      const r = await readPages(pid, pairs, { buffer: buf });
      if (r.missing.length) throw new PhaulError('failed', `pid ${pid}: pages at 0x${r.missing[0].toString(16)} could not be read (unmapped while it was stopped?)`);
    } catch (e) {
      this.pool.release(buf);
      throw e;
    }
    const head = encodeRawHead({ pid, round: 0, ranges: [{ vaddr, nrPages: pages }] }, bytes);
    await this.out.sendBuffers([head, buf.subarray(0, bytes)], () => this.pool.release(buf));
  }
}

export class PostcopyPusher {
  /** Per page of the layout: 1 once a lane took it. */
  private readonly taken: Uint8Array;
  private readonly demandLane: Lane;
  private readonly bulkLane: Lane;
  private readonly requests: PageRequest[] = [];
  private serving?: Promise<void>;
  private failure?: PhaulError;
  private stopped = false;
  /** Pages taken by a lane so far. */
  private takenCount = 0;
  /** Where the push goes on: after the last page asked for (its neighbourhood is likely next). */
  private cursor = 0;
  /** Pages sent because the destination asked for them. */
  demandPages = 0;
  requestCount = 0;

  /**
   * streams: the data connections (at least 2: the first carries only the
   * requested pages). hostPid: image id -> the original process's pid here.
   */
  constructor(private readonly layout: PostcopyLayout, private readonly hostPid: Map<number, number>, streams: Socket[],
    ended: () => boolean) {
    if (streams.length < 2) throw new PhaulError('usage', 'postcopy needs at least 2 data streams');
    this.taken = new Uint8Array(layout.pages);
    this.demandLane = new Lane(streams.slice(0, 1), ended);
    this.bulkLane = new Lane(streams.slice(1), ended);
  }

  get bytesSent(): number {
    return this.demandLane.out.bytesSent + this.bulkLane.out.bytesSent;
  }

  /** The destination asked for pages (a fault waits on them): they go next, on the demand lane. */
  request(m: PageRequest): void {
    if (this.stopped) return;
    if (m.page + m.pages > this.layout.pages) {
      this.fail(new PhaulError('protocol', `page-request for pages ${m.page}+${m.pages} beyond the ${this.layout.pages} lazy pages`));
      return;
    }
    this.requestCount++;
    this.requests.push({ ...m, pages: Math.min(m.pages, BATCH_PAGES) });
    this.cursor = Math.min(m.page + m.pages, this.layout.pages);
    this.serving ??= this.serveRequests();
  }

  /** Sends the queued requests in order; clears `serving` in the same turn as it finds the queue empty,
   *  so that a request queued later starts it again (none waits for the push instead). */
  private async serveRequests(): Promise<void> {
    try {
      for (let m = this.requests.shift(); m && !this.stopped; m = this.requests.shift())
        this.demandPages += await this.sendUntaken(this.demandLane, m.page, m.pages);
    } catch (e) {
      this.fail(asPhaulError(e, 'network'));
    } finally {
      this.serving = undefined;
    }
  }

  /** Sends the pages of [page, page + pages) no lane took yet; returns how many. */
  private async sendUntaken(lane: Lane, page: number, pages: number): Promise<number> {
    let sent = 0;
    for (const piece of this.layout.pieces(page, pages)) {
      const end = piece.page + piece.pages;
      for (let p = piece.page; p < end;) {
        if (this.taken[p]) { p++; continue; }
        let q = p;
        while (q < end && !this.taken[q]) this.taken[q++] = 1;
        this.takenCount += q - p;
        const pid = this.hostPid.get(piece.run.id);
        if (pid === undefined) throw new PhaulError('failed', `no process of the tree has image id ${piece.run.id}`);
        await lane.send(pid, piece.run.vaddr + (p - piece.run.page) * PAGE_SIZE, q - p);
        sent += q - p;
        p = q;
      }
    }
    return sent;
  }

  private fail(e: PhaulError): void {
    this.failure ??= e;
    this.stop();
  }

  /** The first page not taken from `from` on, wrapping around (-1: none). */
  private nextUntaken(from: number): number {
    const n = this.layout.pages;
    for (let k = 0, p = from % n; k < n; k++, p = p + 1 === n ? 0 : p + 1) if (!this.taken[p]) return p;
    return -1;
  }

  /**
   * The background push: every page not yet taken, in 4 MiB batches, in
   * layout order from the last page asked for on (so a fault's neighbourhood
   * comes next). Resolves when all are written to the connections.
   */
  async push(): Promise<void> {
    while (this.takenCount < this.layout.pages && !this.stopped) {
      const page = this.nextUntaken(this.cursor);
      if (page < 0) break;
      this.cursor = page + BATCH_PAGES;
      await this.sendUntaken(this.bulkLane, page, BATCH_PAGES);
    }
    await this.bulkLane.out.flush();
    await this.serving;
    await this.demandLane.out.flush();
    if (this.failure) throw this.failure;
    if (this.stopped) throw new PhaulError('network', 'the page push was stopped');
  }

  /** The first failure of the demand lane, if any (the push itself throws its own). */
  get failed(): PhaulError | undefined {
    return this.failure;
  }

  /** Ends both lanes: a write blocked on the destination fails now. */
  stop(): void {
    this.stopped = true;
    this.demandLane.out.abort();
    this.bulkLane.out.abort();
  }

  close(): void {
    this.demandLane.out.close();
    this.bulkLane.out.close();
  }
}

/**
 * Reads the control connection for the rest of a postcopy migration:
 * `page-request`s go to the pusher the moment they come; everything else
 * waits for expect(). (The migration's own reads would otherwise leave a
 * request queued behind the message they wait for.)
 */
export class ControlPump {
  private readonly queue: Message[] = [];
  private waiter?: { t: MessageType; resolve: (m: Message) => void; reject: (e: PhaulError) => void };
  private failure?: PhaulError;

  constructor(private readonly conn: FrameConn, private readonly onRequest: (m: PageRequest) => void) {
    void this.loop();
  }

  private async loop(): Promise<void> {
    for (;;) {
      let m: Message;
      try {
        m = await this.conn.next(3_600_000);
      } catch (e) {
        if (!this.conn.closed) continue; // only a quiet hour
        this.failure = asPhaulError(e, 'network');
        this.waiter?.reject(this.failure);
        this.waiter = undefined;
        return;
      }
      if (m.t === 'page-request') this.onRequest(m);
      else this.deliver(m);
    }
  }

  private deliver(m: Message): void {
    const w = this.waiter;
    if (!w) { this.queue.push(m); return; }
    this.waiter = undefined;
    if (m.t === w.t) w.resolve(m);
    else if (m.t === 'error') w.reject(new PhaulError(m.code, `${this.conn.peer}: ${m.message}`));
    else w.reject(new PhaulError('protocol', `${this.conn.peer} sent '${m.t}' where '${w.t}' was expected`));
  }

  /** As FrameConn.expect, for the messages that are not page requests. */
  expect<T extends MessageType>(t: T, timeoutMs: number): Promise<MessageOf<T>> {
    return new Promise<MessageOf<T>>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new PhaulError('network', `${this.conn.peer} did not answer within ${Math.round(timeoutMs / 1000)} s`));
      }, timeoutMs);
      this.waiter = {
        t,
        resolve: (m) => { clearTimeout(timer); resolve(m as MessageOf<T>); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      };
      const queued = this.queue.shift();
      if (queued) this.deliver(queued);
      else if (this.failure) {
        const w = this.waiter;
        this.waiter = undefined;
        w.reject(this.failure);
      }
    });
  }
}
