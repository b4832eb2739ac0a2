// What native/lazy_fill_napi.cc exports: the lazy-pages server that fills a
// lazily restored tree's memory through its userfaultfds (native/lazy_fill.h).

/** What the server did (native/lazy_fill.h Stats). */
export interface FillStats {
  tasks: number;
  zombies: number;
  forks: number;
  /** Processes that exited (or exec'd) before all their pages were placed. */
  exits: number;
  /** Pages the images list as lazy. */
  pages: number;
  /** Pages placed with UFFDIO_COPY, for faults and in the background. */
  copiedPages: number;
  faultPages: number;
  faults: number;
  /** Faults on pages no extent lists (all zeros): answered with UFFDIO_ZEROPAGE. */
  zeroFaults: number;
  /** Pages unmapped or dropped (MADV_DONTNEED) before they were placed. */
  droppedPages: number;
  /** Store bytes given back (punched out of its files) once placed. */
  punchedBytes: number;
  copies: number;
  retries: number;
  /** From the restore's connection to its "finished". */
  restoreMs: number;
  /** From the restore's "finished" to the last page in place. */
  fillMs: number;
  /** Reads of a userfaultfd, and how long they waited for the background copies under way. */
  batches: number;
  gateWaitUsTotal: number;
  gateWaitUsMax: number;
  /** Faults on a page a background copy had under way: that copy's wake answered them. */
  joinedFaults: number;
  /** Postcopy: faults that waited for their page to arrive; ranges asked for; bytes said present. */
  waitedFaults: number;
  needs: number;
  /** Postcopy: of the ranges asked for, those before the restore finished (the tree still frozen). */
  restoreNeeds: number;
  presentBytes: number;
  /** From a fault's message (the reader's wake-up) to its page in place, microseconds. */
  faultUs: { count: number; p50: number; p99: number; max: number };
}

/**
 * Flat records, microseconds since the restore finished: faults (seen, latency,
 * kind 0 copied / 1 joined a background copy / 2 zero page, bytes its window placed, time placing its own page, then the rest of its window),
 * reads of a userfaultfd (start, wait for the background copies under way,
 * messages), background copies (start, duration, bytes).
 */
export interface FillTrace {
  faults: Float64Array;
  reads: Float64Array;
  slices: Float64Array;
  /** Store ranges given back: start, duration, bytes. */
  punches: Float64Array;
}

export interface FillImage {
  /** CRIU's image id (the pid in the tree's namespace). */
  id: number;
  /** (start, end, file, offset) in bytes, four numbers per extent, ascending. */
  extents: Float64Array;
}

export interface LazyFillOptions {
  /** From lazyFillListen; closed by the server. */
  listenFd: number;
  /** The pages files extents point into, by index. */
  files: string[];
  images: FillImage[];
  /** Background copy threads (1-16, default 2). */
  threads?: number;
  /** Bytes a background thread claims at a time (default 1 MiB). */
  chunkBytes?: number;
  /**
   * Bytes one background UFFDIO_COPY places (default 256 KiB): reading a
   * userfaultfd waits for the copy under way (native/lazy_fill.cc says why).
   */
  sliceBytes?: number;
  /** Bytes a fault brings in, aligned around it (a power of two, default 64 KiB). */
  faultBytes?: number;
  /** Give each file range back once placed (default true). */
  punch?: boolean;
  /** How long to wait for the restore to connect (default 10 min). */
  connectTimeoutMs?: number;
  /**
   * Postcopy: a stream socket on which the files' data is said present as it
   * arrives, and over which the server asks for what a fault lacks (24-byte
   * records, native/lazy_fill.h ControlRecord). Closed by the server.
   */
  controlFd?: number;
  /** Keep FillStats.trace (for measuring). */
  trace?: boolean;
}

export interface LazyFillNative {
  /** Binds and listens on a unix stream socket (path relative to the cwd); returns its fd. */
  lazyFillListen(path: string): number;
  /** Serves one restore; resolves once every page is in place, rejects with why it could not go on. */
  /** With LazyFillOptions.trace, also the first seconds after the restore (native/lazy_fill.h Stats). */
  lazyFillServe(o: LazyFillOptions): Promise<FillStats & { trace?: FillTrace }>;
}
