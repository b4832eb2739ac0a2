// The source side of pre-copy: copy memory while the workload runs, round
// after round, until the policy says the rest fits in the downtime limit; then
// switch over with CRIU's lazy dump, so the pause holds only the last dirty
// pages, CRIU's small images and a restore (docs/DESIGN.md section 6).
//
// Round r: scan every process of the tree (uffd-wp + PAGEMAP_SCAN), announce
// mappings the destination's store has not seen, read the dirty pages
// (process_vm_readv) and stream them over N data connections; then a `round`
// message on the control channel, acknowledged once the store holds them all.
import * as fs from 'node:fs';
import type { Socket } from 'node:net';
import * as path from 'node:path';
import { PhaulError } from '../errors';
import { FrameConn } from '../protocol/frames';
import { exiting, TreeTracker } from '../memory/tree-tracker';
import { isZeroPage, readPages } from '../memory/read-pages';
import { DirtyTrackingError } from '../memory/errors';
import { batches, PAGE_SIZE, pairBytes, RANGE_PRESENT, RANGE_SWAPPED, RANGE_ZERO, selectPairs, VMA_FILE, VMA_SHARED, VMA_TRACKED } from '../memory/ranges';
import { encodeBatch, encodeRawHead } from '../transport/page-batch';
import { BufferPool } from '../transport/buffer-pool';
import { BatchSender } from '../transport/batch-sender';
import { nativeBatchConns } from './data-channel';
import { chooseCompression, measureLz4 } from '../transport/compression';
import { SwitchoverPolicy } from '../policy/switchover';
import { PE_LAZY, PE_PRESENT, readPagemapImage } from '../store/pagemap-image';
import { LAYOUT_MAX_RANGES, type ProcLayout } from '../protocol/messages';

export interface PrecopyOptions {
  downtimeLimitMs?: number;
  maxRounds?: number;
  maxBandwidthBps?: number;
  streams?: number;
  compress?: 'auto' | 'lz4' | 'none';
  autoConverge?: boolean;
  /** The destination restores lazily (hybrid mode): the restore no longer grows with memory. Set by the engine. */
  lazyRestore?: boolean;
}

export interface RoundEvent {
  round: number;
  pages: number;
  bytes: number;
  ms: number;
  dirtyRateBps: number;
  bandwidthBps: number;
  pendingBytes: number;
  expectedDowntimeMs: number;
  throttlePct: number;
  action: string;
}

/** The frozen round (PrecopyRun.frozenRound): what it moved and where its time went. */
export interface FrozenRoundStats {
  pages: number;
  bytes: number;
  /** Finding the pages (the tree frozen, CRIU dumping it). */
  scanMs: number;
  /** Reading and writing them to the data connections. */
  sendMs: number;
  /** From its last batch written to the destination's acknowledgement that its store holds them. */
  storedMs: number;
  /** When it ended (epoch ms). */
  endAt: number;
}

export interface RoundRecord {
  pages: number;
  bytes: number;
  ms: number;
  dirtyRate: number;
}

const BATCH_BYTES = 4 * 1024 * 1024;
/**
 * How long the frozen round may take at the last live round's rate before the policy tries one
 * more live round (SwitchoverConfig.frozenBudgetMs): that round runs while CRIU dumps (its images
 * took 24-140 ms from the freeze at 256 MiB on the 2-core test VM, under load), and a fixed 1 MiB
 * bound let rounds of 1,700-7,000 scattered pages end the pre-copy at 37-90 MB/s: the 8-23 MiB left
 * were still being read and stored 72-179 ms after CRIU's images were ready.
 */
const FROZEN_BUDGET_MS = 20;
/** Pending bytes that never ask for one more round (64 pages: a scan costs more). */
const SETTLE_BYTES = 64 * PAGE_SIZE;
/**
 * From the switchover decision to the freeze: CRIU's set-up once its gate opens (the phase
 * criu-freeze, 9-61 ms under load). The workload writes on meanwhile, so the frozen round holds
 * that too: the policy counts it in what is pending.
 */
const FREEZE_LEAD_MS = 20;
/** The most batches one native call sends (32 MiB): per-batch JS and thread-pool hand-offs cost ~0.1 s of CPU per GiB. */
const MAX_BATCHES_PER_CALL = 8;
/**
 * The native path's read buffer, and so the largest batch it writes: a call of 8 batches of
 * BATCH_BYTES goes out as 2 of 16 MiB. The destination's work per batch (header and ranges
 * into JS, the store's plan, two thread-pool calls) is then paid 4x less often; a small round
 * still goes in batches of BATCH_BYTES over every connection.
 */
const NATIVE_BATCH_BYTES = 16 * 1024 * 1024;

/**
 * How many batches each native call of a process's round should send: as many as keep every
 * connection busy with at least two calls (a small round, such as the frozen one, still goes
 * out in single batches over all of them), up to MAX_BATCHES_PER_CALL.
 */
export function batchesPerCall(bytes: number, connections: number): number {
  return Math.max(1, Math.min(MAX_BATCHES_PER_CALL, Math.floor(bytes / (2 * Math.max(1, connections) * BATCH_BYTES))));
}

/** Read buffers per data connection: one being written, one being read into. */
const BUFFERS_PER_STREAM = 2;

/** Namespace pid (last NSpid) of a host pid: how CRIU names the process in its images. */
export function nsPid(pid: number): number {
  const m = /^NSpid:\s+(.*)$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  const ids = (m?.[1] ?? String(pid)).trim().split(/\s+/);
  return Number(ids[ids.length - 1]);
}

const NONE = new BigUint64Array(0);

/** One process's part of a round: PrecopySender.plan, announce, send. */
export interface PlannedSet {
  pid: number;
  /** [start, end) pairs to read and send. */
  pairs: BigUint64Array;
  /** [start, end) pairs of known-zero anonymous memory. */
  zeros: bigint[];
}

/**
 * What CRIU's lazy dump in imagesDir lists as host process `pid`'s lazy
 * memory (pagemap-<its namespace pid>.img: entries PE_LAZY, not PE_PRESENT),
 * as [start, end, RANGE_PRESENT] triples; none when CRIU wrote no pagemap for
 * it (a zombie). The destination's composer requires every such page of the
 * store (src/store/compose.ts).
 */
export function criuLazyRanges(imagesDir: string, pid: number): BigUint64Array {
  const file = path.join(imagesDir, `pagemap-${nsPid(pid)}.img`);
  if (!fs.existsSync(file)) return NONE;
  const out: bigint[] = [];
  for (const e of readPagemapImage(file).entries) {
    if (!(e.flags & PE_LAZY) || e.flags & PE_PRESENT) continue;
    out.push(BigInt(e.vaddr), BigInt(e.vaddr + e.nrPages * PAGE_SIZE), BigInt(RANGE_PRESENT));
  }
  return BigUint64Array.from(out);
}

/** Sorted, merged [start, end) intervals of what the store already knows per pid. */
export class KnownRanges {
  private readonly byPid = new Map<number, Array<[bigint, bigint]>>();

  /** The parts of `want` not yet announced; records them as announced. The
   *  store treats a second layout over the same pages as a new level that hides
   *  the old one, so nothing may be announced twice. */
  add(pid: number, want: Array<[bigint, bigint]>): Array<[bigint, bigint]> {
    const have = this.byPid.get(pid) ?? [];
    const fresh: Array<[bigint, bigint]> = [];
    for (const [s, e] of merge(want)) {
      let cur = s;
      for (const [hs, he] of have) {
        if (he <= cur || hs >= e) continue;
        if (hs > cur) fresh.push([cur, hs]);
        cur = he > cur ? he : cur;
        if (cur >= e) break;
      }
      if (cur < e) fresh.push([cur, e]);
    }
    this.byPid.set(pid, merge([...have, ...fresh]));
    return fresh;
  }

  /** Forgets pid (it exited): a later process with its number starts afresh. */
  forget(pid: number): void {
    this.byPid.delete(pid);
  }
}

/** Sorted, overlapping or touching intervals merged. */
function merge(xs: Array<[bigint, bigint]>): Array<[bigint, bigint]> {
  const all = [...xs].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const out: Array<[bigint, bigint]> = [];
  for (const r of all) {
    const last = out[out.length - 1];
    if (last && r[0] <= last[1]) { if (r[1] > last[1]) last[1] = r[1]; } else out.push([r[0], r[1]]);
  }
  return out;
}

/** The RANGE_ZERO parts of `ranges` that lie in private anonymous tracked VMAs
 *  (in a file mapping, "not present" means file content, not zeros). */
export function anonZeroPairs(ranges: BigUint64Array, vmas: BigUint64Array): bigint[] {
  const out: bigint[] = [];
  const anon = BigInt(VMA_TRACKED);
  const notAnon = BigInt(VMA_FILE | VMA_SHARED);
  for (let i = 0; i + 2 < ranges.length; i += 3) {
    if (!(Number(ranges[i + 2]) & RANGE_ZERO)) continue;
    for (let j = 0; j + 2 < vmas.length; j += 3) {
      if (!(vmas[j + 2] & anon) || vmas[j + 2] & notAnon) continue;
      const s = ranges[i] > vmas[j] ? ranges[i] : vmas[j];
      const e = ranges[i + 1] < vmas[j + 1] ? ranges[i + 1] : vmas[j + 1];
      if (s < e) out.push(s, e);
    }
  }
  return out;
}

export class PrecopySender {
  private readonly known = new KnownRanges();
  private readonly out: BatchSender;
  private compress = false;
  /** Per pid: the never-populated (or zapped) anonymous ranges sent as zeros so far, as [start, end) pairs. */
  readonly zeroRanges = new Map<number, bigint[]>();

  private readonly pool: BufferPool;
  /** batchesWritten when the round began. */
  private batchesBefore = 0;
  /** Layouts planned and not yet announced. */
  private pendingLayout: ProcLayout[] = [];
  /** Processes exited since the last announce(), for the store to forget. */
  private pendingGone: number[] = [];

  constructor(private readonly control: FrameConn, streams: Socket[], private readonly opts: PrecopyOptions) {
    this.out = new BatchSender(streams, nativeBatchConns(streams), () => control.closed, opts.maxBandwidthBps);
    this.pool = new BufferPool(this.out.native ? NATIVE_BATCH_BYTES : BATCH_BYTES, BUFFERS_PER_STREAM * streams.length + 1);
  }

  get bytesSent(): number {
    return this.out.bytesSent;
  }

  /** Pages not sent because they could not be read (natively; unmapped since the scan). */
  get missingPages(): number {
    return this.out.missingPages;
  }

  /** A write blocked on the destination fails now (the migration is being aborted). */
  abort(): void {
    this.out.abort();
  }

  /** Ends the data connections. */
  close(): void {
    this.out.close();
  }

  async chooseCompression(linkBps?: number): Promise<void> {
    const mode = this.opts.compress ?? 'auto';
    const lz4Bps = mode === 'auto' ? measureLz4() : undefined;
    this.compress = chooseCompression(mode, { linkBps, lz4Bps });
  }

  /** Records the tracked mappings holding `data` that the store has not seen (whole VMAs: the store's files are sparse) for the next announce(). */
  private addLayout(pid: number, data: BigUint64Array, vmas: BigUint64Array): void {
    const want: Array<[bigint, bigint]> = [];
    for (let i = 0; i < vmas.length; i += 3) {
      if (!(vmas[i + 2] & BigInt(VMA_TRACKED))) continue;
      const s = vmas[i], e = vmas[i + 1];
      // Only mappings that hold data this round; others are announced when they do.
      for (let j = 0; j < data.length; j += 2) if (data[j] < e && data[j + 1] > s) { want.push([s, e]); break; }
    }
    // Data outside any tracked VMA (e.g. untracked, re-sent at switchover) is announced as is.
    for (let j = 0; j < data.length; j += 2) {
      const s = data[j], e = data[j + 1];
      const inside = want.some(([ws, we]) => s >= ws && e <= we);
      if (!inside) want.push([s, e]);
    }
    const fresh = this.known.add(pid, want);
    if (fresh.length) {
      this.pendingLayout.push({ pid, ranges: fresh.map(([s, e]) => ({ vaddr: Number(s), nrPages: Number((e - s) / BigInt(PAGE_SIZE)) })) });
    }
  }

  /**
   * Announces every layout planned since the last call, in as few messages
   * as the size limit allows (one per round as a rule: a tree of many
   * processes costs one round trip, not one per process), and waits for the
   * store to hold them. The layouts travel on the control connection, the
   * pages on the data streams: without the acknowledgement a batch could
   * reach the store before the layout it needs (a new process, a new mapping).
   */
  async announce(): Promise<void> {
    const all = this.pendingLayout;
    let gone = this.pendingGone;
    this.pendingLayout = [];
    this.pendingGone = [];
    for (let i = 0; i < all.length || gone.length; ) {
      const procs: ProcLayout[] = [];
      let n = 0;
      // Whole processes per message: a process announced twice would get a second level in the store.
      for (; i < all.length && (procs.length === 0 || n + all[i].ranges.length <= LAYOUT_MAX_RANGES); i++) {
        procs.push(all[i]);
        n += all[i].ranges.length;
      }
      this.control.send(gone.length ? { t: 'layout', procs, gone: gone.slice(0, 1 << 16) } : { t: 'layout', procs });
      gone = gone.slice(1 << 16);
      await this.control.expect('layout-ack', 60_000);
    }
  }

  /**
   * A process that exited (the scan said so, after the round that last sent
   * its pages was acknowledged): the next announce() has the store forget it
   * and give its pages back. A tree that forks and reaps all through a long
   * migration would otherwise fill the store with the dead, and its pid
   * count up to the store's limit.
   */
  forget(pid: number): void {
    this.known.forget(pid);
    this.zeroRanges.delete(pid);
    this.pendingGone.push(pid);
  }

  /**
   * What one scan of one process (`ranges`: a DirtySet's triples, `extra`:
   * more [start, end) pairs to read) asks to send; the mappings it needs join
   * the layout the next announce() sends. send() it after that announce().
   */
  plan(pid: number, ranges: BigUint64Array, vmas: BigUint64Array, extra?: BigUint64Array): PlannedSet {
    let pairs = selectPairs(ranges, RANGE_PRESENT | RANGE_SWAPPED);
    if (extra && extra.length) pairs = BigUint64Array.from([...pairs, ...extra]);
    const zeros = anonZeroPairs(ranges, vmas);
    if (zeros.length) {
      const known = this.zeroRanges.get(pid) ?? [];
      for (const z of zeros) known.push(z);
      this.zeroRanges.set(pid, known);
    }
    this.addLayout(pid, BigUint64Array.from([...pairs, ...zeros]), vmas);
    return { pid, pairs, zeros };
  }

  /**
   * Sends the pages of a plan (announced); returns the pages read. A page
   * that cannot be read (unmapped since the scan) is not sent; with the tree
   * stopped (`stopped`) none may be missing: that fails the round rather than
   * leave the store an older copy.
   */
  async send(p: PlannedSet, round: number, stopped = false): Promise<number> {
    const { pid, pairs, zeros } = p;
    let pages = 0;
    // Known-zero anonymous pages: unpopulated (or MADV_DONTNEED'd) under
    // write-protection. Their uffd-wp markers look like swap entries in
    // /proc/PID/pagemap, so CRIU lists them as pages to restore: the store must
    // hold them, as zeros, which cost a range entry and no data.
    for (let i = 0; i < zeros.length; ) {
      const ranges: { vaddr: number; nrPages: number; zero: boolean }[] = [];
      for (; i < zeros.length && ranges.length < 60_000; i += 2) {
        for (let s = zeros[i]; s < zeros[i + 1]; ) {
          const n = Math.min(Number((zeros[i + 1] - s) / BigInt(PAGE_SIZE)), 1 << 30);
          ranges.push({ vaddr: Number(s), nrPages: n, zero: true });
          s += BigInt(n * PAGE_SIZE);
        }
      }
      await this.out.sendBuffers(encodeBatch({ pid, round, ranges, data: Buffer.alloc(0) }, { compress: false }));
    }
    const native = this.out.native && !this.compress;
    // Natively, one call writes several batches (batch-sender.ts): JS and the thread pool are entered once per call.
    const perCall = native ? batchesPerCall(pairBytes(pairs), this.out.width) : 1;
    for (const b of batches(pairs, BATCH_BYTES * perCall)) {
      if (native) {
        // Read and written on a libuv thread (batch-sender.ts); its bytes never come into JS.
        const bytes = pairBytes(b);
        // A process that exited since the scan is skipped there (batch-sender.ts), as below.
        await this.out.sendPages(pid, round, b, bytes, this.pool, { goneIsSkipped: true, missingFails: stopped });
        pages += bytes / PAGE_SIZE;
        continue;
      }
      // Into a buffer used before (buffer-pool.ts: fresh memory is slow to fill), back to the pool once written.
      const buf = await this.pool.acquire();
      let res: Awaited<ReturnType<typeof readPages>>;
      try {
        res = await readPages(pid, b, { zeroMap: true, buffer: buf });
      } catch (e) {
        this.pool.release(buf);
        // It exited after the scan (a container's short-lived children do):
        // its pages no longer matter; what was sent of it is counted.
        if (e instanceof DirtyTrackingError && e.reason === 'process-gone') break;
        throw e;
      }
      if (stopped && res.missing.length) {
        this.pool.release(buf);
        throw new PhaulError('failed', `pid ${pid}: pages at 0x${res.missing[0].toString(16)} could not be read with the tree stopped`);
      }
      const ranges: { vaddr: number; nrPages: number; zero?: boolean }[] = [];
      const chunks: Buffer[] = [];
      let page = 0;
      for (let i = 0; i < b.length; i += 2) {
        const n = Number((b[i + 1] - b[i]) / BigInt(PAGE_SIZE));
        // 0 data, 1 all zeros, 2 unreadable (unmapped since the scan): not sent, as natively (batch_io.cc).
        const kind = (p: number) => (res.missingMap && isZeroPage(res.missingMap, p) ? 2 : res.zeroMap && isZeroPage(res.zeroMap, p) ? 1 : 0);
        for (let k = 0; k < n; ) {
          const what = kind(page + k);
          const zero = what === 1;
          let run = 1;
          while (k + run < n && kind(page + k + run) === what) run++;
          if (what === 2) { this.out.missingPages += run; k += run; continue; }
          ranges.push({ vaddr: Number(b[i]) + k * PAGE_SIZE, nrPages: run, zero: zero || undefined });
          if (!zero) chunks.push(buf.subarray((page + k) * PAGE_SIZE, (page + k + run) * PAGE_SIZE));
          k += run;
        }
        page += n;
      }
      pages += page;
      if (ranges.length === 0) { this.pool.release(buf); continue; } // nothing readable: nothing to send
      if (this.compress) {
        const data = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
        const wire = encodeBatch({ pid, round, ranges, data }, { compress: true });
        if (wire[wire.length - 1] !== data || data.buffer !== buf.buffer) {
          this.pool.release(buf);
          await this.out.sendBuffers(wire);
          continue;
        }
        await this.out.sendBuffers(wire, () => this.pool.release(buf));
        continue;
      }
      // Raw: the header, then the non-zero runs straight from the pooled buffer (no concatenation).
      const head = encodeRawHead({ pid, round, ranges }, chunks.reduce((n, c) => n + c.length, 0));
      await this.out.sendBuffers([head, ...chunks], () => this.pool.release(buf));
    }
    return pages;
  }

  /**
   * Ends a round: waits until the destination's store holds every batch of it.
   * The count is of batches written, known only once they all are: a batch
   * of a process that exited before it was read is never sent.
   */
  async endRound(round: number, final = false): Promise<void> {
    await (await this.sendRoundEnd(round, final)).stored;
  }

  /**
   * endRound() up to its `round` message: `stored` is the acknowledgement to
   * come, which the caller awaits (the final round's switchover message goes
   * right behind it, and the destination reads them in order).
   */
  async sendRoundEnd(round: number, final = false): Promise<{ stored: Promise<void> }> {
    await this.out.flush();
    const batches = this.out.batchesWritten - this.batchesBefore;
    this.batchesBefore = this.out.batchesWritten;
    this.control.send({ t: 'round', round, batches, final });
    const stored = this.control.expect('round-ack', 120_000).then((ack) => {
      if (ack.round !== round) throw new PhaulError('protocol', 'round acknowledgement out of order');
    });
    stored.catch(() => undefined); // the caller's to await
    return { stored };
  }
}

/** The round loop: scans, sends, asks the policy, throttles, until switchover. */
export class PrecopyRun {
  readonly records: RoundRecord[] = [];
  private round = 0;
  private lastScanAt = 0;
  /**
   * The last live round's acknowledgement, not yet awaited: the next round scans and sends while
   * the destination still stores the previous one (its store lagged the send by 5-140 ms per round
   * of scattered pages under load, time the workload spent dirtying more). Awaited before the next
   * round's end is sent, and before the switchover.
   */
  private unacked: Promise<void> | undefined;
  private readonly policy: SwitchoverPolicy;

  constructor(
    private readonly sender: PrecopySender,
    private readonly tracker: TreeTracker,
    private readonly opts: PrecopyOptions,
    private readonly onRound: (e: RoundEvent) => void,
    private readonly log: (m: string) => void,
  ) {
    this.policy = new SwitchoverPolicy({
      downtimeLimitMs: opts.downtimeLimitMs ?? 300,
      maxRounds: opts.maxRounds ?? 30,
      maxBandwidthBps: opts.maxBandwidthBps,
      autoConverge: !!opts.autoConverge,
      frozenBudgetMs: FROZEN_BUDGET_MS,
      settleBytes: SETTLE_BYTES,
    });
  }

  /**
   * One scan of the tree, every dirty page sent and acknowledged.
   * live: a round while the tree runs. frozen: the tree is frozen and CRIU is
   * dumping it (its parasite mapped in): the mappings known so far only,
   * protected again so that the final scan finds only what it did not send.
   * final: after CRIU's images (in imagesDir), everything left, nothing
   * protected again, and the processes that appeared after the last live scan.
   */
  private async sendRound(kind: 'live' | 'frozen' | 'final', imagesDir?: string): Promise<{ pages: number; bytes: number; ms: number; scanMs: number; sendMs: number; sinceLastMs: number; stored: Promise<void> }> {
    const final = kind === 'final';
    const t = Date.now();
    const sinceLastMs = this.lastScanAt ? t - this.lastScanAt : 0;
    this.lastScanAt = t;
    // The last scan, with the tree frozen, need not protect anything again.
    const scan = await this.tracker.scan({ protect: !final, sync: kind !== 'frozen', frozen: final });
    const scanMs = Date.now() - t;
    const before = this.sender.bytesSent;
    const missingBefore = this.sender.missingPages;
    for (const pid of scan.exited) this.sender.forget(pid);
    const plans: PlannedSet[] = [];
    for (const [pid, set] of scan.sets) {
      const tr = this.tracker.tracker(pid);
      if (!tr) continue;
      // At switchover, also what tracking cannot see: shared mappings (other
      // writers) and untracked ones (e.g. PROT_NONE turned accessible).
      let extra: BigUint64Array | undefined;
      if (final) {
        const more: bigint[] = [];
        for (const list of [set.shared, set.untracked]) {
          for (let i = 0; i < list.length; i += 2) {
            const present = selectPairs(tr.present(list[i], list[i + 1]), RANGE_PRESENT | RANGE_SWAPPED);
            more.push(...present);
          }
        }
        if (more.length) extra = BigUint64Array.from(more);
      }
      plans.push(this.sender.plan(pid, set.ranges, tr.vmas().ranges, extra));
    }
    // Forked between the last live scan and the freeze: no tracker (CRIU
    // holds them), so no page of theirs was sent. They cannot run either, so
    // what CRIU lists as their lazy memory is read once, exactly.
    const tracked = plans.length;
    if (final) {
      for (const pid of scan.untracked) {
        const lazy = criuLazyRanges(imagesDir!, pid);
        if (lazy.length) plans.push(this.sender.plan(pid, lazy, NONE));
      }
    }
    await this.sender.announce();
    let pages = 0;
    let late = 0;
    for (let i = 0; i < plans.length; i++) {
      const n = await this.sender.send(plans[i], this.round, kind !== 'live');
      pages += n;
      if (i >= tracked) late += n;
    }
    if (scan.untracked.length) {
      this.log(`${scan.untracked.length} process(es) appeared after the last live scan (${scan.untracked.join(' ')}): the ${late} pages CRIU lists for them sent whole`);
    }
    const sendMs = Date.now() - t - scanMs;
    await this.acked();
    // The final round's acknowledgement is the caller's to await (finalRound()), a live round's the next round's.
    const { stored } = await this.sender.sendRoundEnd(this.round, final);
    // Counted as each native call ends: all of this round's have by now (its batches were all written).
    const missing = this.sender.missingPages - missingBefore;
    if (missing) this.log(`round ${this.round}: ${missing} pages unmapped since the scan were not sent (the store keeps what it had)`);
    if (kind === 'live') this.unacked = stored;
    else if (kind === 'frozen') await stored;
    return { pages, bytes: this.sender.bytesSent - before, ms: Date.now() - t, scanMs, sendMs, sinceLastMs, stored };
  }

  /**
   * Right before the lazy dump: clears write protection on the ranges sent as
   * zeros so far. Their uffd-wp markers would otherwise look like swapped
   * pages to CRIU, which would list and pin them while the tree is frozen (a
   * 2 GiB mapping with 64 MiB touched: ~510 ms of pause in hybrid mode). A page
   * written from now on counts as written, so the final scan still sends it.
   * Best effort: a failure costs pause time, not correctness. Returns bytes.
   */
  unprotectZeros(): number {
    let bytes = 0;
    for (const [pid, pairs] of this.sender.zeroRanges) {
      const tr = this.tracker.tracker(pid);
      if (!tr) continue;
      try {
        bytes += tr.unprotect(BigUint64Array.from(pairs));
      } catch (e) {
        // A child that exited since the last scan has nothing to clear (the next scan drops it).
        if (!exiting(pid)) this.log(`could not clear write protection of pid ${pid}'s empty ranges: ${(e as Error).message}`);
      }
    }
    return bytes;
  }

  /** Waits for the last live round's acknowledgement, if it is still to come. */
  private async acked(): Promise<void> {
    const p = this.unacked;
    this.unacked = undefined;
    await p;
  }

  async rounds(throttle: (pct: number) => Promise<void> | void): Promise<RoundRecord[]> {
    let memBytes = 0;
    for (;;) {
      // Decide BEFORE scanning: a scan re-arms write-protection, so every page
      // it reports must be sent; deciding afterwards would strand them.
      if (this.round > 0) {
        const decide = () => this.policy.decide({ fixedCostMs: switchoverCostMs(memBytes, !!this.opts.lazyRestore), sinceLastScanMs: Date.now() - this.lastScanAt + FREEZE_LEAD_MS });
        let d = decide();
        if (d.action === 'switchover' && this.unacked) {
          // Nothing may be in flight at the freeze; the wait dirtied more and was part of that
          // round's cost (the destination storing it), so ask again with both counted.
          const t = Date.now();
          await this.acked();
          this.policy.noteStoreLag(Date.now() - t);
          d = decide();
        }
        const last = this.records[this.records.length - 1];
        this.onRound({
          round: this.round - 1, pages: last.pages, bytes: last.bytes, ms: last.ms, dirtyRateBps: d.dirtyRateBps,
          bandwidthBps: d.bandwidthBps, pendingBytes: d.pendingBytes, expectedDowntimeMs: d.expectedDowntimeMs,
          throttlePct: d.throttlePct ?? 0, action: d.action,
        });
        if (d.action === 'switchover') {
          this.log(`switchover after round ${this.round - 1}: ${d.reason}`);
          return this.records;
        }
        if (d.action === 'throttle' && d.throttlePct) await throttle(d.throttlePct);
      }
      const r = await this.sendRound('live');
      if (this.round === 0) {
        memBytes = r.pages * PAGE_SIZE;
        await this.sender.chooseCompression(r.bytes / Math.max(r.ms / 1000, 1e-3));
      }
      const dirtyRate = this.round > 0 && r.sinceLastMs > 0 ? (r.pages * PAGE_SIZE) / (r.sinceLastMs / 1000) : 0;
      this.records.push({ pages: r.pages, bytes: r.bytes, ms: r.ms, dirtyRate });
      this.policy.record({ round: this.round, pages: r.pages, bytes: r.bytes, ms: r.ms, scanMs: r.scanMs, dirtyPagesFound: r.pages, sinceLastScanMs: r.sinceLastMs });
      this.round++;
    }
  }

  /**
   * With the tree frozen: the last dirty pages, plus shared and untracked
   * memory. Says how long finding them (scanMs) and reading and sending them
   * (sendMs) took; returns once its end is sent: `stored` settles with the
   * destination's acknowledgement, which the caller awaits after sending the
   * switchover (saving a round trip inside the pause).
   */
  async finalRound(imagesDir: string): Promise<{ pages: number; ms: number; scanMs: number; sendMs: number; stored: Promise<void> }> {
    const r = await this.sendRound('final', imagesDir);
    this.records.push({ pages: r.pages, bytes: r.bytes, ms: r.ms, dirtyRate: 0 });
    return { pages: r.pages, ms: r.ms, scanMs: r.scanMs, sendMs: r.sendMs, stored: r.stored };
  }

  /**
   * As soon as the tree is frozen, while CRIU still dumps it: the pages
   * written since the last round in the mappings tracked so far, read and
   * stored in parallel with CRIU's work (the final round then holds only
   * what this one could not see: new mappings, shared and untracked memory).
   */
  async frozenRound(): Promise<FrozenRoundStats> {
    const r = await this.sendRound('frozen');
    this.records.push({ pages: r.pages, bytes: r.bytes, ms: r.ms, dirtyRate: 0 });
    this.round++;
    return { pages: r.pages, bytes: r.bytes, scanMs: r.scanMs, sendMs: r.sendMs, storedMs: r.ms - r.scanMs - r.sendMs, endAt: Date.now() };
  }
}

/** Fixed part of the pause besides the last pages: CRIU's lazy dump (~60-130 ms
 *  measured) and the restore, which is O(memory) here (~0.7 ms/MiB measured),
 *  or, lazily (hybrid), ~80-90 ms at 1 GiB: mappings only, no page copied. */
export function switchoverCostMs(memBytes: number, lazyRestore = false): number {
  const mib = memBytes / (1024 * 1024);
  return lazyRestore ? 200 + 0.02 * mib : 120 + 0.7 * mib;
}
