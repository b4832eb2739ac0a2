// What native/page_reader.cc exports: reading another process's pages with
// process_vm_readv, on a worker thread.

export interface NativeRead {
  bytes: number;
  missing: BigUint64Array;
  zeroMap: Uint8Array | null;
  zeroPages: number;
  calls: number;
  ns: number;
}

export interface PageReaderNative {
  readPages(pid: number, ranges: BigUint64Array, buf: Uint8Array, opts?: { offset?: number; zeroMap?: boolean }): Promise<NativeRead>;
}
