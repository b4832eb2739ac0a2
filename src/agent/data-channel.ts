// The data connections of a migration, after authentication. Stop-copy: on
// the source the socket CRIU's page-server client writes into; on the
// destination it feeds the native page server. Over plain TCP both ends leave
// Node and are moved with splice (no user-space copy); over TLS, Node pumps
// the bytes between the TLS socket and a local socketpair, since CRIU and the
// page server only speak to a plain descriptor. Pre-copy: page batches, over
// plain TCP through native BatchConns (native/batch_io.cc: no page byte in
// JS), over TLS through Node (transport/batch-stream.ts, batch-sender.ts).
import * as net from 'node:net';
import type * as tls from 'node:tls';
import { addon, type NativeBatchConn } from '../native';
import { PhaulError } from '../errors';
import { FrameConn } from '../protocol/frames';
import { isTlsSocket } from '../protocol/secure-channel';
import { PageServer } from '../transport/page-server';
import { attachBatchStream, attachNativeBatchStream, type BatchSink, type BatchStreamHandle } from '../transport/batch-stream';

export interface PageStats {
  entries: number;
  pages: number;
  bytes: number;
  images: string[];
}

export interface DataChannel {
  /** Destination: serve CRIU's page-server protocol into `dir`. */
  servePages(dir: string, headerSize: 24 | 32): Promise<PageStats>;
  abort(): void;
}

export interface SourceDataChannel {
  /** The descriptor to hand to CRIU as its page-server socket. */
  criuFd: number;
  /** Resolves when CRIU has finished and all its bytes have left. */
  done: Promise<{ sent: number }>;
  abort(): void;
}

export function rawFd(sock: net.Socket): number {
  const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new PhaulError('failed', 'data connection has no descriptor');
  return fd;
}

/** Pumps a TLS socket to and from one end of a new socketpair; returns the other end. */
function tlsBridge(sock: tls.TLSSocket): number {
  const [mine, theirs] = addon().streamSocketPair();
  const local = new net.Socket({ fd: mine, readable: true, writable: true });
  sock.pipe(local);
  local.pipe(sock);
  const end = () => { local.destroy(); sock.destroy(); };
  sock.on('close', end);
  local.on('close', end);
  local.on('error', end);
  sock.resume();
  return theirs;
}

export function openDataChannelServer(conn: FrameConn): DataChannel {
  const sock = conn.socket as net.Socket;
  conn.detach(!isTlsSocket(sock));
  let fd: number;
  if (isTlsSocket(sock)) {
    fd = tlsBridge(sock);
  } else {
    fd = addon().dupStreamFd(rawFd(sock));
    sock.destroy();
  }
  let handle: PageServer | undefined;
  let aborted = false;
  return {
    servePages(dir, headerSize) {
      if (aborted) return Promise.reject(new PhaulError('failed', 'data channel aborted'));
      // The wrapper keeps the failure's kind: protocol, network, or disk (failed).
      handle = PageServer.start(fd, dir, { headerSize, idleTimeoutMs: 120_000 });
      return handle.done;
    },
    abort() {
      if (aborted) return;
      aborted = true;
      if (handle) handle.abort('migration aborted');
      else addon().closeFd(fd);
    },
  };
}

export function openDataChannelClient(conn: FrameConn): SourceDataChannel {
  const sock = conn.socket as net.Socket;
  conn.detach(!isTlsSocket(sock));
  if (isTlsSocket(sock)) {
    const criuFd = tlsBridge(sock);
    const done = new Promise<{ sent: number }>((resolve) => {
      let sent = 0;
      sock.on('drain', () => undefined);
      const origWrite = sock.write.bind(sock);
      (sock as unknown as { write: typeof origWrite }).write = ((chunk: Buffer, ...rest: never[]) => {
        sent += chunk.length;
        return origWrite(chunk, ...rest);
      }) as typeof origWrite;
      sock.on('close', () => resolve({ sent }));
    });
    return { criuFd, done, abort: () => sock.destroy() };
  }
  const fd = addon().dupFd(rawFd(sock));
  sock.destroy();
  const relay = addon().startRelay(fd);
  let aborted = false;
  // The wake-up pipe is closed by abortRelay, or here once the relay ended by itself.
  relay.done.catch(() => undefined).finally(() => {
    if (!aborted) addon().closeFd(relay.abortFd);
    aborted = true;
  });
  return {
    criuFd: relay.criuFd,
    done: relay.done,
    abort() {
      if (aborted) return;
      aborted = true;
      addon().abortRelay(relay.abortFd);
    },
  };
}

/** A pre-copy data connection: page batches, JS-read over TLS, read natively into the sink's files over plain TCP. */
export interface BatchStream {
  attach(sink: BatchSink, onError: (e: PhaulError) => void): BatchStreamHandle;
  close(): void;
}

/** What derives a data connection's page-batch MAC key from its handshake (FrameConn.subkey). */
const BATCH_KEY_LABEL = 'page batches';

/** Keys of plain data connections handed over as sockets (batchSocket), for nativeBatchConns. */
const batchKeys = new WeakMap<net.Socket, Buffer>();

/**
 * The socket of an authenticated data connection, for page batches (source):
 * detached from framing; over plain TCP its batches will carry MACs under a
 * key derived from the connection's handshake.
 */
export function batchSocket(conn: FrameConn): net.Socket {
  conn.detach(false);
  const sock = conn.socket as net.Socket;
  const key = conn.subkey(BATCH_KEY_LABEL, 'send');
  if (key) batchKeys.set(sock, key);
  return sock;
}

/** Takes over an authenticated data connection for page batches (destination). */
export function openBatchStream(conn: FrameConn): BatchStream {
  const sock = conn.socket as net.Socket;
  if (isTlsSocket(sock)) {
    conn.detach(false);
    return { attach: (sink, onError) => attachBatchStream(sock, (b) => sink.write(b), onError), close: () => sock.destroy() };
  }
  const key = conn.subkey(BATCH_KEY_LABEL, 'receive');
  if (!key) throw new PhaulError('failed', 'a data connection for page batches must be authenticated first');
  conn.detach(true);
  const bc = new (addon().BatchConn)(addon().dupFd(rawFd(sock)));
  sock.destroy();
  // Plain TCP: every batch must carry its MAC (native/batch_io.cc).
  bc.setMacKey(key);
  return { attach: (sink, onError) => attachNativeBatchStream(bc, sink, onError), close: () => bc.close() };
}

/**
 * Takes over authenticated data connections (batchSocket) for sending page
 * batches (source): native over plain TCP, each batch with its MAC.
 */
export function nativeBatchConns(socks: net.Socket[]): NativeBatchConn[] | undefined {
  if (socks.some((s) => isTlsSocket(s))) return undefined;
  const keys = socks.map((s) => batchKeys.get(s));
  if (keys.some((k) => !k)) throw new PhaulError('failed', 'a data connection for page batches must come from batchSocket');
  return socks.map((s, i) => {
    const bc = new (addon().BatchConn)(addon().dupFd(rawFd(s)));
    s.destroy();
    bc.setMacKey(keys[i]!);
    return bc;
  });
}
