// A promise raced against a deadline, failing with a PhaulError of the caller's code.
import { ErrorCode, PhaulError } from '../errors';

export function withDeadline<T>(p: Promise<T>, ms: number, code: ErrorCode, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    t = setTimeout(() => reject(new PhaulError(code, `${what} within ${Math.round(ms / 1000)} s`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(t));
}
