// Typed errors with stable codes and distinct process exit codes. Every failure
// that reaches a user is one of these, printed as one line (never a stack).

export const ExitCode = {
  ok: 0,
  failed: 1,          // migration failed; see rolledBack in the report
  usage: 2,           // bad command-line input
  unavailable: 3,     // a required tool or kernel feature is missing
  auth: 4,            // the peer refused our token, or we refused theirs
  incompatible: 5,    // versions or capabilities do not match
  network: 6,         // could not connect, connection lost, timeout
  protocol: 7,        // the peer sent something malformed or unexpected
  criu: 8,            // CRIU failed
  notFound: 9,        // no such process / file
  lost: 10,           // we could not prove the workload is alive anywhere: investigate
  busy: 11,           // the destination refused a session up front: too many, or no room; nothing was touched
} as const;

export type ErrorCode = keyof typeof ExitCode;

export class PhaulError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'PhaulError';
  }
  get exitCode(): number {
    return ExitCode[this.code];
  }
}

/** Any thrown value as a PhaulError, keeping the code of one that already is. */
export function asPhaulError(err: unknown, fallback: ErrorCode = 'failed'): PhaulError {
  if (err instanceof PhaulError) return err;
  const msg = err instanceof Error ? err.message : String(err);
  return new PhaulError(fallback, msg, { cause: err });
}
