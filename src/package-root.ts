// The directory phaul-fast is installed in (a checkout, or node_modules/phaul-fast):
// package.json, build/ (the addon), .criu/ (setup's CRIU) and scripts/ live there.
import * as path from 'node:path';

// This file compiles to dist/src/package-root.js.
export const PACKAGE_ROOT = path.join(__dirname, '..', '..');
