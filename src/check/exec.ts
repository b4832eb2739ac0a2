// Runs a probe command without a shell and never throws: a missing binary, a
// non-zero exit or a timeout are all answers the caller reports.
import { execFile } from 'node:child_process';

export interface ExecResult {
  /** Exit code; null when the command could not run or was killed. */
  code: number | null;
  stdout: string;
  stderr: string;
  /** Why it did not run, when it did not (ENOENT, timeout, ...). */
  error?: string;
}

export function exec(file: string, args: string[], timeoutMs = 30_000): Promise<ExecResult> {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: timeoutMs, maxBuffer: 1 << 20, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (!err) return resolve({ code: 0, stdout, stderr });
      const e = err as NodeJS.ErrnoException & { code?: string | number; killed?: boolean };
      if (typeof e.code === 'number') return resolve({ code: e.code, stdout, stderr });
      const why = e.killed ? `timed out after ${timeoutMs} ms` : (e.code ?? e.message);
      resolve({ code: null, stdout, stderr, error: String(why) });
    });
  });
}

/** The text a command printed, stdout then stderr, on one line. */
export function oneLine(r: ExecResult): string {
  return `${r.stdout}\n${r.stderr}`.split('\n').map((l) => l.trim()).filter(Boolean).join('; ');
}
