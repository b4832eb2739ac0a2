// What native/criu_rpc.cc exports: one `criu swrk` session speaking CRIU's RPC,
// for what libcriu cannot ask (lazy pages, a page-server socket, notify hooks),
// plus the descriptor helpers its callers need. src/criu/rpc.ts is the caller.

/** One message from CRIU: a notification, the final response, or end of stream. */
export interface CriuRpcMessage {
  eof: boolean;
  type?: string;
  success?: boolean;
  script?: string;
  pid?: number;
  restorePid?: number;
  crErrno?: number;
  crErrmsg?: string;
  version?: { major: number; minor: number; sublevel: number };
}

export interface CriuSwrkSession {
  /** Sends the one request of this session (opts as CRIU's criu_opts, camelCased). */
  request(req: { type: string; opts?: Record<string, unknown> }): void;
  next(): Promise<CriuRpcMessage>;
  notifyReply(ok: boolean): void;
  /** Resolves when criu has exited. */
  wait(): Promise<{ code?: number; signal?: number }>;
  kill(signal?: number): void;
  close(): void;
}

export interface CriuRpcNative {
  /** Starts `criu swrk`; inheritFds stay open in criu under the same numbers. */
  CriuSwrk: new (criuBinary: string, inheritFds: number[]) => CriuSwrkSession;
  /** A close-on-exec O_DIRECTORY descriptor (CRIU's images_dir_fd). */
  openDir(path: string): number;
  closeFd(fd: number): void;
  /** A close-on-exec duplicate (>= 3) of fd. */
  dupFd(fd: number): number;
  /** mkfifo(2): a FIFO at path with mode (its permission bits); throws with the errno's text. */
  makeFifo(path: string, mode: number): void;
}
