// DirtyTracker: the pages one process writes between rounds (docs/DESIGN.md
// section 3). One per process: the tracking is per address space, and fork
// children are not covered (TreeTracker tracks a whole tree).
import { DirtyTrackingError, fromNative } from './errors';
import { addon, type NativeDirtyTracker, type NativeScan, type NativeStats } from '../native';

export interface DirtySet {
  pid: number;
  /** 0 for the first scan after start(). */
  round: number;
  /** The first scan reports every page of the process (a full copy). */
  first: boolean;
  /** [start, end, flags] triples, ascending; flags: RANGE_PRESENT | RANGE_SWAPPED | RANGE_ZERO. */
  ranges: BigUint64Array;
  pages: number;
  zeroPages: number;
  /** [start, end) pairs registered this round (new mmaps, brk growth, stacks,
   *  mremap targets). Their pages are all in `ranges` already. */
  newVmas: BigUint64Array;
  /** [start, end) pairs unmapped since the previous round: drop them. */
  vanished: BigUint64Array;
  /** [start, end) pairs of MAP_SHARED mappings: writes by other processes are
   *  not reported; re-send them at switchover (or track every sharer). */
  shared: BigUint64Array;
  /** [start, end) pairs mapped but not tracked (PROT_NONE reservations, mappings
   *  userfaultfd refuses): copy their present pages at switchover (see present()). */
  untracked: BigUint64Array;
  trackedBytes: number;
  timing: { mapsMs: number; scanMs: number; totalMs: number; ioctls: number; retries: number };
}

export interface StartInfo {
  /** Time the borrowed thread was held by ptrace (µs-ms). */
  injectMs: number;
  startMs: number;
  /** The thread that ran the injected syscalls. */
  tid: number;
  userModeOnly: boolean;
  features: number;
}

export interface TrackerStats extends NativeStats {}

export class DirtyTracker {
  readonly pid: number;
  private t: NativeDirtyTracker | null;
  private round = 0;
  private started = false;

  /** Kernel support for tracking: { ok, reason }. */
  static support(): { ok: boolean; features: number; reason: string } {
    return addon().dirtyTrackingSupport();
  }

  constructor(pid: number) {
    if (!Number.isInteger(pid) || pid <= 0) throw new DirtyTrackingError('failed', pid, `invalid pid ${pid}`);
    this.pid = pid;
    this.t = new (addon().DirtyTracker)(pid);
  }

  /**
   * Takes a userfaultfd from the process (ptrace injection, ~0.1-0.3 ms held)
   * and registers its memory. Rejects with DirtyTrackingError; `err.fallback`
   * means "use another migration mode for this process".
   */
  async start(): Promise<StartInfo> {
    const t = this.live();
    if (this.started) throw new DirtyTrackingError('failed', this.pid, 'DirtyTracker already started');
    try {
      const r = await t.start();
      this.started = true;
      return { injectMs: r.injectNs / 1e6, startMs: r.startNs / 1e6, tid: r.tid, userModeOnly: r.userModeOnly, features: r.features };
    } catch (e) {
      throw fromNative(e, this.pid);
    }
  }

  /**
   * Pages written since the previous scan (every page on the first). One scan
   * at a time. `protect: false` (the last scan, with the process frozen)
   * reports without write-protecting the pages again. `sync: false` scans
   * only the mappings registered so far, without reading the maps (a frozen
   * process that CRIU's parasite is in: its mapping is CRIU's, not ours).
   */
  async scan(opts: { protect?: boolean; sync?: boolean } = {}): Promise<DirtySet> {
    const t = this.live();
    if (!this.started) throw new DirtyTrackingError('failed', this.pid, 'DirtyTracker.scan() before start()');
    let r: NativeScan;
    try {
      r = await t.scan(opts.protect ?? true, opts.sync ?? true);
    } catch (e) {
      throw fromNative(e, this.pid);
    }
    return {
      pid: this.pid,
      round: this.round++,
      first: r.first,
      ranges: r.ranges,
      pages: r.pages,
      zeroPages: r.zeroPages,
      newVmas: r.newVmas,
      vanished: r.vanished,
      shared: r.shared,
      untracked: r.untracked,
      trackedBytes: r.trackedBytes,
      timing: { mapsMs: r.mapsNs / 1e6, scanMs: r.scanNs / 1e6, totalMs: r.totalNs / 1e6, ioctls: r.ioctls, retries: r.retries },
    };
  }

  /** Present/swapped pages of [start, end) as triples, without touching write
   *  protection: for untracked or shared ranges at switchover. */
  present(start: bigint, end: bigint): BigUint64Array {
    try {
      return this.live().present(start, end);
    } catch (e) {
      throw fromNative(e, this.pid);
    }
  }

  /**
   * Clears write protection on [start, end) pairs and returns the bytes
   * cleared. Safe at any time: an unprotected page counts as written, so the
   * next scan reports it if it is populated; a never-populated one loses its
   * uffd-wp marker, which /proc/PID/pagemap (and so CRIU) would show as a
   * swapped page.
   */
  unprotect(pairs: BigUint64Array): number {
    try {
      return this.live().unprotect(pairs);
    } catch (e) {
      throw fromNative(e, this.pid);
    }
  }

  /** The mappings as of the last start()/scan(): [start, end, VMA_* flags] triples and names. */
  vmas(): { ranges: BigUint64Array; names: string[] } {
    return this.live().vmas();
  }

  stats(): TrackerStats {
    return this.live().stats();
  }

  get active(): boolean {
    return this.t !== null && this.started;
  }

  /** Stops tracking: closes the userfaultfd, which unregisters everything.
   *  The process never notices. Idempotent. */
  close(): void {
    if (!this.t) return;
    this.t.close();
    this.t = null;
  }

  private live(): NativeDirtyTracker {
    if (!this.t) throw new DirtyTrackingError('failed', this.pid, 'DirtyTracker is closed');
    return this.t;
  }
}
