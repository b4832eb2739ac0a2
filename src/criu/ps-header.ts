// CRIU's page-server header (criu/page-xfer.c), which our lazy dump's socket
// speaks to end the dump (src/criu/lazy-dump.ts): {u32 cmd; u32 nr_pages;
// u64 vaddr; u64 dst_id} before CRIU 4.2 (24 bytes), {u32 cmd; u64 nr_pages;
// u64 vaddr; u64 dst_id} since (32). Little-endian (x86_64 and aarch64).

/** The page server's "done": CRIU's lazy dump then exits 0. */
export const PS_IOV_CLOSE = 0x1023;

export interface PsHeader {
  cmd: number;
  nrPages: number;
  vaddr: number;
  dstId: number;
}

/** A page-server header as CRIU lays it out. */
export function encodePsHeader(h: PsHeader, size: 24 | 32): Buffer {
  const b = Buffer.alloc(size);
  b.writeUInt32LE(h.cmd, 0);
  if (size === 24) {
    b.writeUInt32LE(h.nrPages, 4);
    b.writeBigUInt64LE(BigInt(h.vaddr), 8);
    b.writeBigUInt64LE(BigInt(h.dstId), 16);
  } else {
    b.writeBigUInt64LE(BigInt(h.nrPages), 8);
    b.writeBigUInt64LE(BigInt(h.vaddr), 16);
    b.writeBigUInt64LE(BigInt(h.dstId), 24);
  }
  return b;
}
