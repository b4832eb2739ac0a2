// The CRIU binary for tests and benchmarks: the engine's own lookup first
// (src/criu/binary.ts), then the copy setup builds into .criu/, because
// `node-gyp rebuild` deletes build/config.json, which that lookup reads.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { criuBinary, PROJECT_ROOT } from '../criu/binary';

export function testCriu(): string {
  try {
    return criuBinary();
  } catch (e) {
    const local = path.join(PROJECT_ROOT, '.criu', 'sbin', 'criu');
    if (fs.existsSync(local)) return local;
    throw e;
  }
}
