#!/usr/bin/env node
'use strict';
// Thin launcher: the CLI is compiled TypeScript in dist/.
const path = require('node:path');
const fs = require('node:fs');
const entry = path.join(__dirname, '..', 'dist', 'src', 'cli', 'main.js');
if (!fs.existsSync(entry)) {
  process.stderr.write('phaul-fast: not built yet; run `npm run setup` in ' + path.join(__dirname, '..') + '\n');
  process.exit(3);
}
require(entry).main(process.argv.slice(2)).then((code) => { process.exitCode = code; });
