// `phaul-fast setup [--quiet] [--force-criu]`: runs the package's scripts/setup.sh
// as root: Debian packages, a CRIU that passes `criu check` (built into .criu/
// unless the system has one), the sysctls and the native addon. In a checkout
// it also builds the TypeScript and the test workloads (docs/SETUP.md).
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { PhaulError } from '../../errors';
import { PACKAGE_ROOT } from '../../package-root';

export async function run(argv: string[]): Promise<number> {
  const script = path.join(PACKAGE_ROOT, 'scripts', 'setup.sh');
  const r = spawnSync('bash', [script, ...argv], { stdio: 'inherit' });
  if (r.error) throw new PhaulError('unavailable', `could not run ${script}: ${r.error.message}`);
  return r.status ?? 1;
}
