// The destination's page store for pre-copy: one directory per migration
// session that is, at every moment, most of a CRIU parent image chain.
//
// Each pid's layout (the ranges the source will send, announced before the
// pages) gets a fixed slot per page in a pages file, in ascending address
// order, so the file is exactly what CRIU's pages-<id>.img must be for a
// pagemap listing those ranges. Every round overwrites slots in place; the
// newest round wins per page. Ranges announced later (new mmaps) cannot be
// inserted into a file laid out by address, so they go into a new level: a
// new directory whose `parent` link points at the previous one. At
// switchover nothing is copied: the composer writes a small pagemap per level
// and points the dump's images at the top level (docs/IMAGES.md).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PhaulError } from '../errors';
import { checkPid, normalizeLayout, pageHex, validateBatch, type IncomingBatch, type LayoutRange, type PageBatch, type Run } from './batch';
import { PAGE_SIZE, PE_PARENT, PE_PRESENT, writePagemapImage, type PagemapEntry } from './pagemap-image';

export type { IncomingBatch, LayoutRange, PageBatch, PageRange } from './batch';

/**
 * Reads a batch's data, still on its connection, into the store's files:
 * `plan` holds [fd, pos, len] triples in wire order that cover the data
 * exactly (fd -1: bytes to read and drop). E.g. BatchConn.receivePayload.
 */
export type PayloadPull = (plan: Float64Array) => Promise<unknown>;

export interface PageStoreOptions {
  /** Most bytes all layouts together may describe (the store's size once every page arrived). Default: free space where the store lives. */
  maxBytes?: number;
  /** Most levels (layout extensions after the first); each is one more link of CRIU's parent chain. Default 32. */
  maxLevels?: number;
  /** Most ranges in one batch. Default 65536. */
  maxBatchRanges?: number;
  /** Most layout ranges per pid. Default 1 << 20. */
  maxLayoutRanges?: number;
  /** Most pids (each has a pages file per level it has ranges in). Default 16384. */
  maxPids?: number;
  /**
   * Runs at least this long are written on the thread pool, shorter ones
   * synchronously: a pwrite of a few pages costs less than the hop to a
   * worker, a long one is better overlapped with receiving. Default 256 KiB.
   */
  asyncWriteBytes?: number;
}

export interface PageStoreStats {
  pids: number;
  levels: number;
  /** Pages all layouts describe. */
  layoutPages: number;
  /** Layout pages received at least once (data or zero). */
  receivedPages: number;
  batches: number;
  /** Data pages written (every round's copy counts). */
  pagesWritten: number;
  /** Zero pages recorded (only those that had data before are written). */
  zeroPages: number;
  /** Page copies ignored because a newer round's copy was already there. */
  stalePages: number;
  bytesWritten: number;
  maxRound: number;
  pendingBatches: number;
  finalized: boolean;
}

/** One pid's ranges in one level: a pages file with a slot per page. */
interface Layer {
  level: number;
  pagesId: number;
  file: string;
  fd: number;
  starts: number[];
  ends: number[];
  /** First slot of each range. */
  slots: number[];
  total: number;
  /** Per slot: 0 = never received, else round + 1 of the copy there. */
  rounds: Uint32Array;
  /** Per slot: 1 when the newest copy is all zeros (never populated, or written with zeros). */
  zero: Uint8Array;
  /** Per range: slots never received (0 = fully covered, so coverage checks skip the scan). */
  missing: Float64Array;
  /** Per range: slots whose newest copy is all zeros (0 = all data, so dataRuns skips the scan). */
  zeros: Float64Array;
}

/** A layout range of some layer, in the pid's address-ordered index. */
interface Seg {
  start: number;
  end: number;
  layer: Layer;
  idx: number;
}

interface Proc {
  pid: number;
  layers: Layer[];
  segs: Seg[];
  layoutPages: number;
  /** Writes in flight per round, settled-safe, for ordering rounds. */
  inflight: Map<number, Set<Promise<void>>>;
}

/** A planned write: data (src) or zeros (src null) into a layer's slots. */
interface Op {
  fd: number;
  pos: number;
  /** ON_WIRE: the data is still on the connection (receive()). */
  src: Uint8Array | null;
  off: number;
  len: number;
}

/**
 * Where to create stores: /dev/shm when it is a tmpfs with room for
 * `bytes`, else the OS temp dir. On ext4 a scattered page write costs ~35 us
 * (journalled mtime updates) against ~4 us on tmpfs: the final round's write
 * is part of the pause (docs/IMAGES.md).
 */
export function defaultStoreRoot(bytes = 0): string {
  try {
    const s = fs.statfsSync('/dev/shm');
    if (s.type === TMPFS_MAGIC && s.bavail * s.bsize > bytes) return '/dev/shm';
  } catch { /* no /dev/shm */ }
  return os.tmpdir();
}

const TMPFS_MAGIC = 0x01021994;

/** Where parent-chain pagemaps get pages ids for pids without a layer in a level: never a layer's id. */
const PASSTHROUGH_ID_BASE = 0x40000000;
const ZERO = Buffer.alloc(1 << 20);
/** Op.src of data still on the connection. */
const ON_WIRE = new Uint8Array(0);

function protocol(msg: string): PhaulError {
  return new PhaulError('protocol', msg);
}

export class PageStore {
  readonly dir: string;
  private readonly procs = new Map<number, Proc>();
  private readonly levelIds: number[] = [];
  private readonly pending = new Set<Promise<void>>();
  private readonly maxBytes: number;
  private readonly maxLevels: number;
  private readonly maxBatchRanges: number;
  private readonly maxLayoutRanges: number;
  private readonly maxPids: number;
  private readonly asyncWriteBytes: number;
  private layoutPages = 0;
  private receivedPages = 0;
  private frozen = false;
  private closed = false;
  private failure: PhaulError | null = null;
  private readonly counters = { batches: 0, pagesWritten: 0, zeroPages: 0, stalePages: 0, bytesWritten: 0, maxRound: -1 };

  /** Opens a new store in dir, which must be absent or empty. Prefer tmpfs (docs/IMAGES.md: ext4 costs ~35 us per scattered page write). */
  constructor(dir: string, opts: PageStoreOptions = {}) {
    fs.mkdirSync(dir, { recursive: true });
    if (fs.readdirSync(dir).length) throw new PhaulError('failed', `page store ${dir} is not empty`);
    this.dir = path.resolve(dir);
    let free = Number.MAX_SAFE_INTEGER;
    try {
      const s = fs.statfsSync(dir);
      free = s.bavail * s.bsize;
    } catch { /* no statfs: only an explicit budget caps */ }
    this.maxBytes = opts.maxBytes ?? free;
    this.maxLevels = opts.maxLevels ?? 32;
    this.maxBatchRanges = opts.maxBatchRanges ?? 65536;
    this.maxLayoutRanges = opts.maxLayoutRanges ?? 1 << 20;
    this.maxPids = opts.maxPids ?? 16384;
    this.asyncWriteBytes = opts.asyncWriteBytes ?? 256 << 10;
  }

  levelDir(level: number): string {
    return path.join(this.dir, `L${level}`);
  }

  /** Levels so far; the composer's child links to levelDir(levels - 1). */
  get levels(): number {
    return this.levelIds.length;
  }

  /**
   * Announces ranges of pid that pages will be sent for (e.g. its private
   * anonymous VMAs, or the present ranges of round 0). Parts already in the
   * layout are ignored; the rest gets slots: in the current level when the
   * pid has none there yet, else in a new level. Reserves no disk space (the
   * pages file is sparse) but counts against maxBytes.
   */
  setLayout(pid: number, ranges: readonly LayoutRange[]): { level: number; addedPages: number } {
    this.checkWritable('layout');
    checkPid(pid, 'layout');
    const wanted = normalizeLayout(pid, ranges, this.maxLayoutRanges);
    if (!this.procs.has(pid) && this.procs.size >= this.maxPids) throw protocol(`layout for pid ${pid}: more than ${this.maxPids} processes`);
    const proc: Proc = this.procs.get(pid) ?? { pid, layers: [], segs: [], layoutPages: 0, inflight: new Map() };
    const fresh = subtract(wanted, proc.segs);
    const added = fresh.reduce((n, [s, e]) => n + (e - s), 0);
    if (added === 0) return { level: -1, addedPages: 0 };
    if (proc.segs.length + fresh.length > this.maxLayoutRanges) throw protocol(`layout for pid ${pid}: more than ${this.maxLayoutRanges} ranges`);
    if ((this.layoutPages + added) * PAGE_SIZE > this.maxBytes) {
      throw protocol(`layout for pid ${pid}: ${added * PAGE_SIZE} more bytes exceed the store budget of ${this.maxBytes} (${this.layoutPages * PAGE_SIZE} used)`);
    }
    let level = Math.max(0, this.levels - 1);
    if (this.levels === 0 || proc.layers.some((l) => l.level === level)) level = this.newLevel();
    const layer = this.newLayer(level, fresh);
    proc.layers.push(layer);
    proc.segs = mergeSegs(proc.segs, layer);
    proc.layoutPages += added;
    this.layoutPages += added;
    this.procs.set(pid, proc);
    return { level, addedPages: added };
  }

  /**
   * Forgets a process that exited at the source: its layout, and its pages
   * files (their memory, on tmpfs, is given back). A later layout for the
   * same pid (a new process) starts afresh. Unknown pids are ignored; one with
   * writes still in flight is a protocol error (the source forgets a process
   * only after the round that last sent it was acknowledged).
   */
  forget(pid: number): void {
    this.checkWritable('forget');
    const proc = this.procs.get(pid);
    if (!proc) return;
    if (proc.inflight.size) throw protocol(`forget pid ${pid}: its batches are still being written`);
    for (const l of proc.layers) {
      this.receivedPages -= l.total - l.missing.reduce((n, m) => n + m, 0);
      fs.closeSync(l.fd);
      fs.rmSync(l.file, { force: true });
    }
    this.layoutPages -= proc.layoutPages;
    this.procs.delete(pid);
  }

  /**
   * Stores one batch. Validates everything before changing anything
   * (PhaulError 'protocol', one line). A page's copy from an older round than
   * the one already stored is ignored, whatever the arrival order; writes of
   * a newer round wait for the pid's writes of older rounds still in flight.
   * Resolves when the data is in the store's files: keep batch.data
   * unchanged until then.
   */
  write(batch: PageBatch): Promise<void> {
    try {
      return this.writeBatch(batch);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * Stores one batch whose data is still on its data connection, with no
   * copy through JS: checked and planned like write() before anything
   * changes (pages outside the layout, stale copies), then, once the pid's
   * older rounds are written, `pull` reads the data straight into the pages
   * files (called exactly once when the batch has data; not at all when it
   * fails its checks, after which the connection is unusable). Resolves when
   * the data is in the store's files.
   */
  receive(batch: IncomingBatch, pull: PayloadPull): Promise<void> {
    try {
      return this.writeBatch(batch, pull);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  private writeBatch(batch: PageBatch | IncomingBatch, pull?: PayloadPull): Promise<void> {
    this.checkWritable('page batch');
    const runs = validateBatch(batch, this.maxBatchRanges);
    const proc = this.procs.get(batch.pid);
    if (!proc) throw protocol(`page batch for pid ${batch.pid}: no layout was announced for it`);
    const pieces = this.place(proc, runs, batch.round);
    const wire = 'data' in batch ? 0 : batch.dataBytes;
    const ops = this.claim(pieces, batch.round + 1, 'data' in batch ? batch.data : ON_WIRE);
    this.counters.batches++;
    if (batch.round > this.counters.maxRound) this.counters.maxRound = batch.round;
    if (ops.length === 0 && wire === 0) return Promise.resolve();

    const older: Promise<void>[] = [];
    for (const [r, set] of proc.inflight) if (r < batch.round) older.push(...set);
    const run = () => {
      if (this.failure) throw this.failure;
      return pull ? this.issueFromWire(ops, wire, pull) : this.issue(ops);
    };
    let set = proc.inflight.get(batch.round);
    if (!set) proc.inflight.set(batch.round, (set = new Set()));
    const mine = set;
    // Bookkeeping ends before the caller's promise settles: stats() right
    // after `await write()` shows no pending batch.
    const p = (older.length ? Promise.all(older).then(run) : Promise.resolve().then(run)).finally(() => {
      mine.delete(settled);
      if (mine.size === 0 && proc.inflight.get(batch.round) === mine) proc.inflight.delete(batch.round);
      this.pending.delete(settled);
    });
    const settled: Promise<void> = p.then(() => undefined, () => undefined);
    mine.add(settled);
    this.pending.add(settled);
    return p;
  }

  stats(): PageStoreStats {
    return {
      pids: this.procs.size,
      levels: this.levels,
      layoutPages: this.layoutPages,
      receivedPages: this.receivedPages,
      ...this.counters,
      pendingBatches: this.pending.size,
      finalized: this.frozen,
    };
  }

  /**
   * At switchover, after the final round's batches were handed to write():
   * refuses further batches and waits for the writes still in flight. The
   * parent images' pages files are complete at that point (every round was
   * written in place as it arrived), so this costs only the last writes.
   */
  async finalizeParent(): Promise<PageStoreStats> {
    this.frozen = true;
    while (this.pending.size) await Promise.all([...this.pending]);
    if (this.failure) throw this.failure;
    return this.stats();
  }

  /** After a rollback the source resumes pre-copy: accept batches again. */
  thaw(): void {
    if (this.closed) throw new PhaulError('failed', 'page store is closed');
    this.frozen = false;
  }

  /** Pids with a layout. */
  pids(): number[] {
    return [...this.procs.keys()].sort((a, b) => a - b);
  }

  /**
   * The first page of [page, page + n) of pid that the store does not hold
   * (outside the layout or never received), or -1 when it holds them all.
   * Costs O(layout ranges touched) when those were fully received.
   */
  firstMissing(pid: number, page: number, n: number): number {
    const proc = this.procs.get(pid);
    if (!proc) return page;
    const end = page + n;
    let i = findSeg(proc.segs, page);
    let p = page;
    while (p < end) {
      const s = proc.segs[i];
      if (!s || s.start > p) return p;
      const stop = Math.min(end, s.end);
      const l = s.layer;
      if (l.missing[s.idx] !== 0) {
        const base = l.slots[s.idx] - l.starts[s.idx];
        for (let q = p; q < stop; q++) if (l.rounds[base + q] === 0) return q;
      }
      p = stop;
      i++;
    }
    return -1;
  }

  /**
   * The runs of [page, page + n) of pid whose newest copy holds data, in order;
   * pages whose newest copy is all zeros are left out (a restore need not
   * populate them: untouched anonymous memory reads as zeros). Call
   * firstMissing first: a page the store does not hold counts as data.
   */
  dataRuns(pid: number, page: number, n: number): Array<{ page: number; n: number }> {
    const proc = this.procs.get(pid);
    if (!proc) return [{ page, n }];
    const runs: Array<{ page: number; n: number }> = [];
    const add = (p: number, len: number) => {
      const last = runs[runs.length - 1];
      if (last && last.page + last.n === p) last.n += len;
      else runs.push({ page: p, n: len });
    };
    const end = page + n;
    let i = findSeg(proc.segs, page);
    let p = page;
    while (p < end) {
      const s = proc.segs[i++];
      if (!s || s.start > p) { add(p, end - p); break; }
      const stop = Math.min(end, s.end);
      const l = s.layer;
      if (l.zeros[s.idx] === 0) {
        // No zero copy in this range: all of it is data (a per-page scan of 1 GiB took ~30 ms inside the pause).
        add(p, stop - p);
        p = stop;
        continue;
      }
      const base = l.slots[s.idx] - l.starts[s.idx];
      let runStart = -1;
      for (let q = p; q < stop; q++) {
        if (l.zero[base + q] === 0) { if (runStart < 0) runStart = q; }
        else if (runStart >= 0) { add(runStart, q - runStart); runStart = -1; }
      }
      if (runStart >= 0) add(runStart, stop - runStart);
      p = stop;
    }
    return runs;
  }

  /** Reads pages of pid held by the store into buf (for flat composition). Call firstMissing first. */
  readPages(pid: number, page: number, n: number, buf: Uint8Array, bufOff = 0): void {
    const proc = this.procs.get(pid);
    if (!proc) throw new PhaulError('failed', `page store has no pid ${pid}`);
    let i = findSeg(proc.segs, page);
    const end = page + n;
    let p = page;
    while (p < end) {
      const s = proc.segs[i++];
      if (!s || s.start > p) throw new PhaulError('failed', `page store: pid ${pid} page ${pageHex(p)} is not in the layout`);
      const stop = Math.min(end, s.end);
      const l = s.layer;
      const pos = (l.slots[s.idx] + (p - s.start)) * PAGE_SIZE;
      readFull(l.fd, buf, bufOff + (p - page) * PAGE_SIZE, (stop - p) * PAGE_SIZE, pos);
      p = stop;
    }
  }

  /**
   * Writes, in every level, pagemap-<imageId>.img for each image id whose
   * store pid has a layer at or below it: that level's own ranges PE_PRESENT
   * (its pages file), lower levels' ranges PE_PARENT with in_parent, all
   * ascending, so a child pagemap may reference any stored page in the top
   * level. Small (one entry per layout range), rewritten on every call.
   * Returns the top level's directory.
   */
  writeChain(imageIds: ReadonlyMap<number, number>): string {
    if (this.levels === 0) throw new PhaulError('failed', 'page store has no layout');
    for (let level = 0; level < this.levels; level++) {
      const dir = this.levelDir(level);
      for (const [imageId, pid] of imageIds) {
        const proc = this.procs.get(pid);
        if (!proc || proc.layers[0].level > level) continue;
        const own = proc.layers.find((l) => l.level === level);
        let pagesId = own?.pagesId;
        if (pagesId === undefined) {
          pagesId = PASSTHROUGH_ID_BASE + imageId;
          fs.writeFileSync(path.join(dir, `pages-${pagesId}.img`), '');
        }
        const entries: PagemapEntry[] = [];
        for (const s of proc.segs) {
          if (s.layer.level > level) continue;
          const mine = s.layer.level === level;
          entries.push({ vaddr: s.start * PAGE_SIZE, nrPages: s.end - s.start, flags: mine ? PE_PRESENT : PE_PARENT, inParent: !mine });
        }
        writePagemapImage(path.join(dir, `pagemap-${imageId}.img`), { pagesId, entries });
      }
    }
    return this.levelDir(this.levels - 1);
  }

  /** Waits for writes in flight and closes the files (the directory stays). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.frozen = true;
    while (this.pending.size) await Promise.all([...this.pending]);
    this.closed = true;
    for (const p of this.procs.values()) for (const l of p.layers) fs.closeSync(l.fd);
  }

  /** close() and remove the directory. */
  async destroy(): Promise<void> {
    await this.close();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  // ---- internals

  private checkWritable(what: string): void {
    if (this.failure) throw this.failure;
    if (this.closed) throw new PhaulError('failed', `page store is closed: ${what} refused`);
    if (this.frozen) throw protocol(`page store is finalized: ${what} refused`);
  }

  private newLevel(): number {
    const level = this.levels;
    if (level >= this.maxLevels) throw protocol(`page store: more than ${this.maxLevels} layout levels`);
    const dir = this.levelDir(level);
    fs.mkdirSync(dir);
    if (level > 0) fs.symlinkSync(`../L${level - 1}`, path.join(dir, 'parent'));
    this.levelIds.push(0);
    return level;
  }

  private newLayer(level: number, ranges: Array<[number, number]>): Layer {
    const pagesId = ++this.levelIds[level];
    const file = path.join(this.levelDir(level), `pages-${pagesId}.img`);
    const starts: number[] = [], ends: number[] = [], slots: number[] = [];
    const missing = new Float64Array(ranges.length);
    let total = 0;
    ranges.forEach(([s, e], i) => {
      starts.push(s); ends.push(e); slots.push(total);
      missing[i] = e - s;
      total += e - s;
    });
    const fd = fs.openSync(file, 'w+');
    // Sparse: exactly 4096 x pages the level's pagemap lists, as CRIU needs.
    fs.ftruncateSync(fd, total * PAGE_SIZE);
    return {
      level, pagesId, file, fd, starts, ends, slots, total, rounds: new Uint32Array(total), zero: new Uint8Array(total), missing,
      zeros: new Float64Array(ranges.length),
    };
  }

  /** Maps runs onto layout segments; throws (before any change) if a page lies outside the layout. */
  private place(proc: Proc, runs: Run[], round: number): Array<{ seg: Seg; page: number; n: number; dataOff: number }> {
    const out: Array<{ seg: Seg; page: number; n: number; dataOff: number }> = [];
    for (const r of runs) {
      let i = findSeg(proc.segs, r.page);
      let p = r.page;
      const end = r.page + r.n;
      while (p < end) {
        const s = proc.segs[i++];
        if (!s || s.start > p) throw protocol(`page batch for pid ${proc.pid} round ${round}: page ${pageHex(p)} is outside its layout`);
        const stop = Math.min(end, s.end);
        out.push({ seg: s, page: p, n: stop - p, dataOff: r.dataOff < 0 ? -1 : r.dataOff + (p - r.page) * PAGE_SIZE });
        p = stop;
      }
    }
    return out;
  }

  /** Marks pages as held by round r1-1 and plans the writes that newer-or-equal copies need. */
  private claim(pieces: Array<{ seg: Seg; page: number; n: number; dataOff: number }>, r1: number, data: Uint8Array): Op[] {
    const ops: Op[] = [];
    for (const pc of pieces) {
      const l = pc.seg.layer;
      const slot0 = l.slots[pc.seg.idx] + (pc.page - pc.seg.start);
      const zero = pc.dataOff < 0;
      let runStart = -1;
      const flush = (endI: number) => {
        if (runStart < 0) return;
        ops.push({ fd: l.fd, pos: (slot0 + runStart) * PAGE_SIZE, src: zero ? null : data, off: zero ? 0 : pc.dataOff + runStart * PAGE_SIZE, len: (endI - runStart) * PAGE_SIZE });
        runStart = -1;
      };
      for (let i = 0; i < pc.n; i++) {
        const st = l.rounds[slot0 + i];
        if (st > r1) { this.counters.stalePages++; flush(i); continue; }
        if (st === 0) { l.missing[pc.seg.idx]--; this.receivedPages++; }
        // A slot never written is a hole of the sparse file, and one whose copy
        // is zeros holds zeros: only data needs overwriting with zeros.
        const needs = !zero || (st !== 0 && l.zero[slot0 + i] === 0);
        l.rounds[slot0 + i] = r1;
        l.zeros[pc.seg.idx] += (zero ? 1 : 0) - l.zero[slot0 + i];
        l.zero[slot0 + i] = zero ? 1 : 0;
        if (zero) this.counters.zeroPages++;
        else this.counters.pagesWritten++;
        if (needs) { if (runStart < 0) runStart = i; } else flush(i);
      }
      flush(pc.n);
    }
    return ops;
  }

  /** Zeros written here, data read from the connection into place by pull (gaps: stale copies, dropped). */
  private async issueFromWire(ops: Op[], wire: number, pull: PayloadPull): Promise<void> {
    const plan: number[] = [];
    let at = 0;
    try {
      const data = ops.filter((op) => op.src === ON_WIRE).sort((a, b) => a.off - b.off);
      for (const op of ops) if (op.src === null) { this.counters.bytesWritten += op.len; writeSync(op); }
      for (const op of data) {
        if (op.off > at) plan.push(-1, 0, op.off - at);
        plan.push(op.fd, op.pos, op.len);
        at = op.off + op.len;
        this.counters.bytesWritten += op.len;
      }
      if (wire > at) plan.push(-1, 0, wire - at);
    } catch (e) {
      this.failure ??= new PhaulError('failed', `page store write failed: ${(e as Error).message}`, { cause: e });
      throw this.failure;
    }
    try {
      await pull(Float64Array.from(plan));
    } catch (e) {
      // The connection's failure is the stream's to report; the store is only
      // unusable when its own write failed.
      if ((e as { reason?: string }).reason === 'failed') this.failure ??= new PhaulError('failed', (e as Error).message, { cause: e });
      throw e;
    }
  }

  private async issue(ops: Op[]): Promise<void> {
    const big: Promise<void>[] = [];
    try {
      for (const op of ops) {
        this.counters.bytesWritten += op.len;
        if (op.len >= this.asyncWriteBytes) big.push(writeAsync(op));
        else writeSync(op);
      }
      await Promise.all(big);
    } catch (e) {
      await Promise.allSettled(big);
      this.failure ??= new PhaulError('failed', `page store write failed: ${(e as Error).message}`, { cause: e });
      throw this.failure;
    }
  }
}

// ---- helpers

/** Index of the first of `list` (sorted, disjoint) that ends after `page`. */
export function firstEndingAfter(list: ReadonlyArray<{ end: number }>, page: number): number {
  let lo = 0, hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (list[mid].end <= page) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
const findSeg = firstEndingAfter;

/** wanted minus the segments already laid out, as [start, end) pairs. */
function subtract(wanted: Array<[number, number]>, segs: Seg[]): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const [s0, e] of wanted) {
    let s = s0;
    let i = findSeg(segs, s);
    while (s < e) {
      const seg = segs[i];
      if (!seg || seg.start >= e) { out.push([s, e]); break; }
      if (seg.start > s) out.push([s, seg.start]);
      s = Math.max(s, seg.end);
      i++;
    }
  }
  return out;
}

function mergeSegs(segs: Seg[], layer: Layer): Seg[] {
  const add: Seg[] = layer.starts.map((start, idx) => ({ start, end: layer.ends[idx], layer, idx }));
  const out: Seg[] = [];
  let i = 0, j = 0;
  while (i < segs.length || j < add.length) {
    if (j >= add.length || (i < segs.length && segs[i].start < add[j].start)) out.push(segs[i++]);
    else out.push(add[j++]);
  }
  return out;
}

function writeSync(op: Op): void {
  let done = 0;
  while (done < op.len) {
    const n = op.src
      ? fs.writeSync(op.fd, op.src, op.off + done, op.len - done, op.pos + done)
      : fs.writeSync(op.fd, ZERO, 0, Math.min(ZERO.length, op.len - done), op.pos + done);
    if (n <= 0) throw new Error(`short write at ${op.pos + done}`);
    done += n;
  }
}

function writeAsync(op: Op): Promise<void> {
  return new Promise((resolve, reject) => {
    let done = 0;
    const next = () => {
      if (done >= op.len) return resolve();
      const cb = (err: NodeJS.ErrnoException | null, n: number) => {
        if (err) return reject(err);
        if (n <= 0) return reject(new Error(`short write at ${op.pos + done}`));
        done += n;
        next();
      };
      if (op.src) fs.write(op.fd, op.src, op.off + done, op.len - done, op.pos + done, cb);
      else fs.write(op.fd, ZERO, 0, Math.min(ZERO.length, op.len - done), op.pos + done, cb);
    };
    next();
  });
}

function readFull(fd: number, buf: Uint8Array, off: number, len: number, pos: number): void {
  let done = 0;
  while (done < len) {
    const n = fs.readSync(fd, buf, off + done, len - done, pos + done);
    if (n <= 0) throw new PhaulError('failed', `page store: short read at ${pos + done}`);
    done += n;
  }
}
