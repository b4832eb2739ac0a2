// Where the CRIU binary is: $PHAUL_FAST_CRIU, else what `npm run setup` chose
// (.criu/config.json), else the project-local build, else `criu` on PATH.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PhaulError } from '../errors';

export const PROJECT_ROOT = path.join(__dirname, '..', '..', '..');

export function criuBinary(): string {
  const env = process.env.PHAUL_FAST_CRIU;
  if (env) return env;
  try {
    const cfg = JSON.parse(fs.readFileSync(path.join(PROJECT_ROOT, '.criu', 'config.json'), 'utf8'));
    if (typeof cfg.criu === 'string' && fs.existsSync(cfg.criu)) return cfg.criu;
  } catch { /* fall through */ }
  const local = path.join(PROJECT_ROOT, '.criu', 'sbin', 'criu');
  if (fs.existsSync(local)) return local;
  for (const dir of (process.env.PATH ?? '').split(':')) {
    for (const name of ['criu']) {
      const p = path.join(dir || '.', name);
      if (fs.existsSync(p)) return p;
    }
  }
  throw new PhaulError('unavailable', 'no CRIU binary found: run `npm run setup` or set PHAUL_FAST_CRIU');
}
