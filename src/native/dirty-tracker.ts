// What native/dirty_tracker_binding.cc exports: the uffd-wp + PAGEMAP_SCAN
// tracker of one process, the syscall injection it uses, and its constants.
// Only src/memory talks to these; everything else uses the classes there.

export interface NativeScan {
  ranges: BigUint64Array;
  newVmas: BigUint64Array;
  vanished: BigUint64Array;
  shared: BigUint64Array;
  untracked: BigUint64Array;
  pages: number;
  zeroPages: number;
  trackedBytes: number;
  mapsNs: number;
  scanNs: number;
  totalNs: number;
  ioctls: number;
  retries: number;
  first: boolean;
}

export interface NativeStart {
  injectNs: number;
  startNs: number;
  features: number;
  userModeOnly: boolean;
  tid: number;
  vmas: number;
}

export interface NativeStats {
  pid: number;
  active: boolean;
  rounds: number;
  pagesReported: number;
  lastScanNs: number;
  injectNs: number;
  startNs: number;
  registrations: number;
  epermRetries: number;
  features: number;
  userModeOnly: boolean;
}

export interface NativeDirtyTracker {
  start(): Promise<NativeStart>;
  /** sync false: only what is registered already, maps not read (native/dirty_tracker.h). */
  scan(protect?: boolean, sync?: boolean): Promise<NativeScan>;
  present(start: bigint, end: bigint): BigUint64Array;
  unprotect(pairs: BigUint64Array): number;
  vmas(): { ranges: BigUint64Array; names: string[] };
  stats(): NativeStats;
  close(): void;
}

export interface DirtyTrackerNative {
  DirtyTracker: new (pid: number) => NativeDirtyTracker;
  injectSyscall(pid: number, nr: number, args?: number[]): { ret: number; ns: number };
  dirtyTrackingSupport(): { ok: boolean; features: number; reason: string };
  sameMm(pid1: number, pid2: number): boolean;
  dirtyConstants: Record<string, number>;
}
