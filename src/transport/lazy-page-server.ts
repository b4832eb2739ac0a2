// Hybrid mode's page source: serves CRIU's lazy-pages daemon, running on the
// destination in remote mode (`criu lazy-pages --page-server --ps-socket FD`),
// from the destination's own copy of the pages (the page store, or the chain
// it wrote: src/store/chain-reader.ts). The restored tree's page faults and
// the daemon's background copy are answered from memory that pre-copy already
// moved here: the source is never asked again.
//
// The page-server protocol of CRIU's page-xfer.c, the GET side (the daemon asks,
// we answer, in order; it may send several requests before reading a reply):
//   request  {cmd = PS_IOV_GET, nr_pages, vaddr, dst_id = image id (pid in the tree's namespace)}
//   reply    {cmd = PS_IOV_ADD_F | PE_PRESENT << 16, nr_pages, vaddr, dst_id}, then nr_pages * 4096 bytes
//   end      {cmd = PS_IOV_FORCE_CLOSE} (CLOSE over TCP), answered with an int32 status (0)
// Headers are {u32 cmd; u32 nr_pages; u64 vaddr; u64 dst_id} before CRIU 4.2
// (24 bytes) and {u32 cmd; u64 nr_pages; u64 vaddr; u64 dst_id} since (32).
// The daemon is a local CRIU started by us, but its requests are still checked:
// a page the store does not hold fails the service instead of answering zeros.
import type { Socket } from 'node:net';
import { PhaulError } from '../errors';
import { PAGE_SIZE, PE_PRESENT } from '../store/pagemap-image';

/** What pages can be answered from (PageStore and ChainReader have both). */
export interface PageSource {
  /** The first page of [page, page + n) not held, or -1. */
  firstMissing(id: number, page: number, n: number): number;
  readPages(id: number, page: number, n: number, buf: Uint8Array): void;
}

const PS_IOV_ADD_F = 6;
const PS_IOV_GET = 7;
export const PS_IOV_CLOSE = 0x1023;
const PS_IOV_FORCE_CLOSE = 0x1024;
const PS_CMD_BITS = 16;
/** Largest request answered (the daemon asks for at most a VMA's worth at a time). */
const MAX_REQUEST_PAGES = 1 << 18;

export interface LazyServeStats {
  requests: number;
  pages: number;
}

export interface PsHeader {
  cmd: number;
  nrPages: number;
  vaddr: number;
  dstId: number;
}

function decode(b: Buffer, size: 24 | 32): PsHeader {
  const u64 = (off: number) => Number(b.readBigUInt64LE(off));
  return size === 24
    ? { cmd: b.readUInt32LE(0), nrPages: b.readUInt32LE(4), vaddr: u64(8), dstId: u64(16) }
    : { cmd: b.readUInt32LE(0), nrPages: u64(8), vaddr: u64(16), dstId: u64(24) };
}

/** A page-server header as CRIU lays it out (little-endian: x86_64 and aarch64). */
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

/**
 * Answers the daemon on `sock` until it says it is done. Resolves with what was
 * served; rejects on a request it cannot answer or a connection that ends early.
 * Pages are looked up by CRIU's image id (the pid in the tree's namespace).
 */
export function serveLazyPages(sock: Socket, store: PageSource, headerSize: 24 | 32): Promise<LazyServeStats> {
  const stats: LazyServeStats = { requests: 0, pages: 0 };
  return new Promise<LazyServeStats>((resolve, reject) => {
    let pending: Buffer = Buffer.alloc(0);
    let done = false;
    const finish = (err?: Error) => {
      if (done) return;
      done = true;
      sock.off('data', onData);
      if (err) {
        sock.destroy();
        reject(err);
      } else {
        resolve(stats);
      }
    };
    const answer = (h: PsHeader): void => {
      const imageId = h.dstId >= 2 ** 31 ? -1 : h.dstId;
      if (h.nrPages < 1 || h.nrPages > MAX_REQUEST_PAGES || h.vaddr % PAGE_SIZE) {
        throw new PhaulError('protocol', `lazy-pages asked for ${h.nrPages} pages at 0x${h.vaddr.toString(16)}`);
      }
      const page = h.vaddr / PAGE_SIZE;
      const miss = store.firstMissing(imageId, page, h.nrPages);
      if (miss >= 0) throw new PhaulError('failed', `lazy-pages asked for page 0x${(miss * PAGE_SIZE).toString(16)} of pid ${imageId}, which the store does not hold`);
      const data = Buffer.allocUnsafe(h.nrPages * PAGE_SIZE);
      store.readPages(imageId, page, h.nrPages, data);
      sock.write(encodePsHeader({ ...h, cmd: PS_IOV_ADD_F | (PE_PRESENT << PS_CMD_BITS) }, headerSize));
      sock.write(data);
      stats.requests++;
      stats.pages += h.nrPages;
    };
    const onData = (chunk: Buffer): void => {
      pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
      try {
        while (!done && pending.length >= headerSize) {
          const h = decode(pending, headerSize);
          pending = pending.subarray(headerSize);
          const cmd = h.cmd & ((1 << PS_CMD_BITS) - 1);
          if (cmd === PS_IOV_GET) {
            answer(h);
          } else if (cmd === PS_IOV_FORCE_CLOSE || cmd === PS_IOV_CLOSE) {
            const status = Buffer.alloc(4); // int32 0: success
            sock.write(status);
            finish();
          } else {
            throw new PhaulError('protocol', `lazy-pages sent page-server command ${h.cmd}`);
          }
        }
      } catch (e) {
        finish(e as Error);
      }
    };
    sock.on('data', onData);
    sock.once('error', (e) => finish(new PhaulError('criu', `lazy-pages connection: ${e.message}`)));
    sock.once('close', () => finish(new PhaulError('criu', 'criu lazy-pages went away before it was done')));
  });
}
