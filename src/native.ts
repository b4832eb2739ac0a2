// Loads the C++ addon once. Everything native goes through here.
import * as path from 'node:path';

// eslint-disable-next-line @typescript-eslint/no-var-requires
export const native: any = require(path.join(__dirname, '..', '..', 'build', 'Release', 'phaul_fast.node'));
