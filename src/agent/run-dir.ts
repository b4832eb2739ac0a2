// Where agents keep small state about the host's migrations outside any --dir:
// /run/phaul-fast (tmpfs: a reboot ends every process the state could name),
// or a directory in the temp dir where there is no /run.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/** /run/phaul-fast/NAME (created, mode 0700); NAME may be '' for the directory itself. */
export function runPath(name: string): string {
  const run = fs.existsSync('/run') ? '/run/phaul-fast' : path.join(os.tmpdir(), 'phaul-fast-run');
  fs.mkdirSync(run, { recursive: true, mode: 0o700 });
  return path.join(run, name);
}

/** A short stable name for a serve --dir (its real path hashed). */
export function dirKey(dir: string): string {
  return crypto.createHash('sha256').update(fs.realpathSync(dir)).digest('hex').slice(0, 32);
}
