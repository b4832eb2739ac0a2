// Destination end of CRIU's page-server protocol: `criu dump --page-server`
// (or anything speaking the same protocol) writes into a socket we own, and
// we write pagemap-*.img / pages-*.img into a directory as `criu page-server`
// would, ready for `criu restore`. The work is in native/page_server.cc, on a
// thread of its own; page data moves socket -> pipe -> file by splice(2).
//
//   const ps = PageServer.start(fd, dir, { headerSize: 32 });  // agent/capabilities.ts: pageServerHeaderSize()
//   ... let criu dump write into the other end ...
//   const stats = await ps.done;       // after the peer's CLOSE
//   ps.abort('rollback');              // any time: done rejects, the fd is closed
//
// The page server cannot tell a failed dump from a good one: CRIU sends its
// close command on both paths. Always check criu's own exit status too.
import type * as net from 'node:net';
import { PhaulError, type ErrorCode } from '../errors';
import { addon, type NativePageServer } from '../native';

export interface PageServerOptions {
  /** Wire header of the dumping CRIU: 24 for <= 4.1, 32 for >= 4.2. With 32 the
   *  pagemap entries also carry nr_pages in field 5, which 4.2 reads. */
  headerSize: 24 | 32;
  /** Largest single entry accepted, in pages (default 1 << 20 = 4 GiB). */
  maxEntryPages?: number;
  /** Most page data accepted in total, in bytes (default: the directory's free space at start). */
  maxBytes?: number;
  /** Fail when the peer sends nothing for this long (default: wait forever; use abort()). */
  idleTimeoutMs?: number;
}

export interface PageServerStats {
  /** pagemap entries written (one per ADD/ADD_F) */
  entries: number;
  pages: number;
  /** page data written, pages * page size */
  bytes: number;
  /** files created in the directory, in creation order (pagemap-*.img, pages-*.img) */
  images: string[];
}

/** error.code set by the addon -> our error codes. */
const CODES: Record<string, ErrorCode> = {
  protocol: 'protocol', // the peer sent something malformed or out of bounds
  network: 'network',   // connection lost, EOF before CLOSE, idle timeout
  nospace: 'failed',    // disk full, or the peer wants more than maxBytes
  io: 'failed',         // local file system error
  aborted: 'failed',    // abort() was called
};

export class PageServer {
  /** Resolves after the peer's CLOSE with what was written; rejects with a PhaulError. */
  readonly done: Promise<PageServerStats>;
  private readonly handle: NativePageServer;

  private constructor(handle: NativePageServer) {
    this.handle = handle;
    this.done = handle.done.then(
      (s) => ({ ...s, images: [...s.images] }),
      (e: Error & { code?: string }) => {
        throw new PhaulError(CODES[e.code ?? ''] ?? 'failed', e.message, { cause: e });
      },
    );
    // Callers may only look at done after other awaits; never an unhandled rejection.
    this.done.catch(() => undefined);
  }

  /**
   * Serves on fd, a connected stream socket (TCP or AF_UNIX) whose peer is
   * already authenticated. The server takes ownership of fd (it makes it
   * blocking and close-on-exec, and closes it when done) unless this throws
   * because fd is not a stream socket.
   */
  static start(fd: number, dir: string, opts: PageServerOptions): PageServer {
    return new PageServer(addon().servePages(fd, dir, opts));
  }

  /**
   * Serves on a connected net.Socket, which is destroyed: its descriptor is
   * duplicated and handed to the native server. The peer must not have sent
   * page-server bytes yet that Node may have read into the socket's buffer
   * (have it wait for a go-ahead on another channel); this is checked.
   */
  static fromSocket(sock: net.Socket, dir: string, opts: PageServerOptions): PageServer {
    return PageServer.start(takeSocketFd(sock), dir, opts);
  }

  /** Stops a running server: done rejects ("aborted: reason"). No-op once finished. */
  abort(reason?: string): void {
    this.handle.abort(reason);
  }
}

/**
 * Takes a connected net.Socket's descriptor out of libuv: returns a blocking,
 * close-on-exec duplicate owned by the caller and destroys the socket.
 */
export function takeSocketFd(sock: net.Socket): number {
  const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new PhaulError('failed', 'socket has no descriptor');
  if (sock.readableLength > 0) {
    throw new PhaulError('protocol', `${sock.readableLength} bytes already read from the socket would be lost`);
  }
  sock.pause();
  const dup = addon().dupStreamFd(fd);
  sock.destroy();
  return dup;
}

/** A connected AF_UNIX stream pair (blocking, close-on-exec), e.g. for `criu dump --ps-socket`. */
export function streamSocketPair(): [number, number] {
  return addon().streamSocketPair();
}
