// What native/page_reader.cc exports: reading another process's pages with
// process_vm_readv, on a worker thread.

export interface NativeRead {
  bytes: number;
  missing: BigUint64Array;
  zeroMap: Uint8Array | null;
  /** With zeroMap, when a page could not be read: bit i set = page i is missing (zero-filled, no copy of anything). */
  missingMap: Uint8Array | null;
  zeroPages: number;
  /** Pages read through /proc/PID/mem, one at a time: those process_vm_readv could not read (PROT_NONE). */
  forcedPages: number;
  calls: number;
  ns: number;
}

export interface PageReaderNative {
  readPages(pid: number, ranges: BigUint64Array, buf: Uint8Array, opts?: { offset?: number; zeroMap?: boolean }): Promise<NativeRead>;
}
