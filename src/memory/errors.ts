// Typed failures of dirty tracking and page reading. `fallback` tells the
// caller that pre-copy is impossible for this process (not that something
// broke): migrate it another way (stop-and-copy, post-copy).
import { PhaulError, type ErrorCode } from '../errors';

export type TrackingFailure =
  | 'uffd-in-use'        // the process has its own userfaultfd (or a range registered with one)
  | 'no-kernel-support'  // no userfaultfd wp-async / PAGEMAP_SCAN (Linux < 6.7)
  | 'unsupported'        // e.g. a 32-bit process, userfaultfd refused in the target
  | 'ptrace-denied'      // someone else traces it, or we may not
  | 'process-gone'       // exited (or exec'd: its tracked memory is gone)
  | 'failed';

const FALLBACK: ReadonlySet<TrackingFailure> = new Set(['uffd-in-use', 'no-kernel-support', 'unsupported', 'ptrace-denied']);

export class DirtyTrackingError extends PhaulError {
  readonly reason: TrackingFailure;
  readonly pid: number;
  readonly errno: number;
  constructor(reason: TrackingFailure, pid: number, message: string, errno = 0, options?: { cause?: unknown }) {
    const code: ErrorCode = FALLBACK.has(reason) ? 'unavailable' : reason === 'process-gone' ? 'notFound' : 'failed';
    super(code, message, options);
    this.name = 'DirtyTrackingError';
    this.reason = reason;
    this.pid = pid;
    this.errno = errno;
  }
  /** True when pre-copy cannot work for this process and another mode should be used. */
  get fallback(): boolean {
    return FALLBACK.has(this.reason);
  }
}

const KNOWN: ReadonlySet<string> = new Set(['uffd-in-use', 'no-kernel-support', 'unsupported', 'ptrace-denied', 'process-gone', 'failed']);

/** Turns an error thrown by the addon (message + reason + errno) into a DirtyTrackingError. */
export function fromNative(err: unknown, pid: number): PhaulError {
  if (err instanceof PhaulError) return err;
  const e = err as { message?: string; reason?: string; errno?: number };
  const reason = (e && typeof e.reason === 'string' && KNOWN.has(e.reason) ? e.reason : 'failed') as TrackingFailure;
  const msg = e && typeof e.message === 'string' ? e.message : String(err);
  return new DirtyTrackingError(reason, pid, msg, e?.errno ?? 0, { cause: err });
}
