// What native/page_server.cc exports: a CRIU-compatible page server on a thread
// of its own, writing pagemap-*.img / pages-*.img. src/transport/page-server.ts
// wraps it; see there for the options' meaning.

export interface NativePageServerOptions {
  headerSize: 24 | 32;
  maxEntryPages?: number;
  maxBytes?: number;
  idleTimeoutMs?: number;
}

export interface NativePageServerStats {
  entries: number;
  pages: number;
  bytes: number;
  images: string[];
}

export interface NativePageServer {
  /** Rejects with an Error whose .code is protocol | network | nospace | io | aborted. */
  done: Promise<NativePageServerStats>;
  abort(reason?: string): void;
}

export interface PageServerNative {
  /** Takes ownership of fd (a connected stream socket). */
  servePages(fd: number, dir: string, opts: NativePageServerOptions): NativePageServer;
  /** A blocking, close-on-exec duplicate of a stream socket; throws for anything else. */
  dupStreamFd(fd: number): number;
  /** A connected AF_UNIX stream pair, blocking and close-on-exec. */
  streamSocketPair(): [number, number];
}
