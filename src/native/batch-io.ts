// What native/batch_io.cc exports: pre-copy page batches between a data
// connection and memory on libuv's threads, with no JS copy in between. One
// call at a time per object; each rejects with an Error whose `reason` is
// 'network', 'process-gone' or 'failed'.

export interface NativeSentPages {
  /** Batches written (a call writes one per buffer's worth of pages; none for pairs of no page). */
  batches: number;
  /** Pages of the pairs (data and all-zero). */
  pages: number;
  zeroPages: number;
  /** Pages that could not be read (unmapped since the scan): not sent at all, neither as data nor as zeros. */
  missingPages: number;
  /** Pages read through /proc/PID/mem, one at a time: those process_vm_readv could not read (PROT_NONE). */
  forcedPages: number;
  /** Bytes on the wire (0: nothing to send). */
  wireBytes: number;
  readNs: number;
}

export type NativeReadBatch =
  | { end: true }
  /** The header failed the native size checks: parseHeader says why; nothing more was read. */
  | { end?: undefined; head: Buffer; ranges?: undefined }
  /** inBuffer false: the payload did not fit in the buffer and is still on the connection (readPayload). */
  | { end?: undefined; head: Buffer; ranges: Buffer; payloadLen: number; inBuffer: boolean };

export interface NativeBatchConn {
  /**
   * pid's pairs as raw batches of at most buf's size, one after the other: each read into buf
   * (process_vm_readv), then written, all-zero pages as zero ranges. On failure the error's
   * `batches` counts the batches written whole before it.
   */
  sendPages(pid: number, round: number, pairs: BigUint64Array, buf: Uint8Array): Promise<NativeSentPages>;
  /** Writes these buffers, in order, completely. */
  sendBuffers(bufs: Uint8Array[]): Promise<void>;
  /** The next batch: header, ranges, and its payload into buf when it fits. */
  read(buf: Uint8Array): Promise<NativeReadBatch>;
  /** The payload read() left on the connection, into buf. */
  readPayload(buf: Uint8Array, len: number): Promise<object>;
  /**
   * The payload read() left on the connection, into files: with a MAC key
   * through a small reused buffer (MAC'd while cache-hot, then pwrite),
   * without one spliced (socket -> pipe -> file). `plan` holds [fd, pos, len]
   * triples in wire order that cover the payload exactly; fd -1 reads and drops.
   */
  receivePayload(plan: Float64Array): Promise<object>;
  /**
   * Before the first batch: every batch from now on is followed by a 16-byte
   * Poly1305 tag under this 32-byte key (ChaCha20-Poly1305 with the batch as
   * associated data, the batch's sequence number as nonce), and the receiver
   * fails a batch whose tag does not match (reason 'protocol').
   */
  setMacKey(key: Uint8Array): void;
  /** A call blocked on the peer fails now, and every later one. */
  abort(): void;
  /** abort(), and the descriptor closes once no call uses it. */
  close(): void;
}

export interface BatchIoNative {
  /** Takes ownership of fd (a connected stream socket). */
  BatchConn: new (fd: number) => NativeBatchConn;
}
