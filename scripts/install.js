'use strict';
// npm's install hook. Building the addon needs CRIU's headers and library, which
// `npm run setup` provides (as root); npm's default `node-gyp rebuild` would fail
// without them, so we only point the way here.
const fs = require('node:fs');
const path = require('node:path');
if (!fs.existsSync(path.join(__dirname, '..', 'build', 'Release', 'phaul_fast.node'))) {
  process.stderr.write('phaul-fast: run `npm run setup` as root to build CRIU and the native addon\n');
}
