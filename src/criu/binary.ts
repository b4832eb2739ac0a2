// Where the CRIU binary is: $PHAUL_FAST_CRIU, else what setup chose
// (.criu/config.json), else the package-local build, else `criu` on PATH.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PhaulError } from '../errors';
import { PACKAGE_ROOT } from '../package-root';

export function criuBinary(): string {
  const env = process.env.PHAUL_FAST_CRIU;
  if (env) return env;
  try {
    const cfg = JSON.parse(fs.readFileSync(path.join(PACKAGE_ROOT, '.criu', 'config.json'), 'utf8'));
    if (typeof cfg.criu === 'string' && fs.existsSync(cfg.criu)) return cfg.criu;
  } catch { /* fall through */ }
  const local = path.join(PACKAGE_ROOT, '.criu', 'sbin', 'criu');
  if (fs.existsSync(local)) return local;
  for (const dir of (process.env.PATH ?? '').split(':')) {
    const p = path.join(dir || '.', 'criu');
    if (fs.existsSync(p)) return p;
  }
  throw new PhaulError('unavailable', 'no CRIU binary found: run `npx phaul-fast setup` as root (in a checkout: npm run setup) or set PHAUL_FAST_CRIU');
}
