// Promises raced against deadlines: withDeadline fails with a PhaulError of the caller's code, within just says it was late.
import { ErrorCode, PhaulError } from '../errors';

export function withDeadline<T>(p: Promise<T>, ms: number, code: ErrorCode, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    t = setTimeout(() => reject(new PhaulError(code, `${what} within ${Math.round(ms / 1000)} s`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(t));
}

/**
 * p, or 'late' after ms: a bounded wait that is not a failure. The timer is
 * cleared either way, so it never keeps a process alive on its own.
 */
export function within<T>(p: Promise<T>, ms: number): Promise<T | 'late'> {
  let t: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((resolve) => { t = setTimeout(() => resolve('late'), ms); });
  return Promise.race([p, late]).finally(() => clearTimeout(t));
}
