// `phaul-fast bench`: the benchmark harness lives in bench/ (docs/BENCH.md),
// which is part of the source checkout, not of the package; it is loaded only
// here, only for this command.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PhaulError } from '../../errors';
import { PACKAGE_ROOT } from '../../package-root';

export async function run(argv: string[]): Promise<number> {
  const entry = path.join(PACKAGE_ROOT, 'dist', 'bench', 'cli.js');
  if (!fs.existsSync(entry)) {
    throw new PhaulError('unavailable', 'the benchmark ships with the source checkout, not the package: clone the repository and run `npm run bench`');
  }
  const harness = require(entry) as { run(argv: string[]): Promise<number> };
  return harness.run(argv);
}
