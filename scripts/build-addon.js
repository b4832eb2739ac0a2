'use strict';
// Builds the native addon (build/Release/phaul_fast.node) against CRIU's
// libcriu, found through pkg-config in this order: $PHAUL_FAST_CRIU_PREFIX (a
// CRIU install prefix, e.g. another checkout's .criu), this package's .criu/
// (what `phaul-fast setup` builds), the system's.
//
//   node scripts/build-addon.js            scripts/setup.sh: fail loudly
//   node scripts/build-addon.js --install  npm's install hook (and `npm rebuild
//                                          phaul-fast`): never fails the install;
//                                          without CRIU it says in one line what to run
//
// With $PHAUL_FAST_CRIU_PREFIX, the prefix's sbin/criu is recorded in
// .criu/config.json, where the engine looks for its CRIU binary.
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const ROOT = path.join(__dirname, '..');
const INSTALL = process.argv.includes('--install');
const FIX = 'run `npx phaul-fast setup` as root';

function say(msg) {
  process.stderr.write(`phaul-fast: ${msg}\n`);
}

function fail(msg) {
  say(msg);
  process.exit(INSTALL ? 0 : 1);
}

function pkgConfigPath() {
  const dirs = [];
  const prefix = process.env.PHAUL_FAST_CRIU_PREFIX;
  if (prefix) dirs.push(path.join(path.resolve(prefix), 'lib', 'pkgconfig'));
  dirs.push(path.join(ROOT, '.criu', 'lib', 'pkgconfig'));
  if (process.env.PKG_CONFIG_PATH) dirs.push(process.env.PKG_CONFIG_PATH);
  return dirs.join(':');
}

// npm sets npm_config_node_gyp for lifecycle scripts; a checkout has node-gyp as
// a devDependency; otherwise the copy that ships with npm.
function nodeGyp() {
  const candidates = [process.env.npm_config_node_gyp];
  try {
    candidates.push(require.resolve('node-gyp/bin/node-gyp.js', { paths: [ROOT] }));
  } catch { /* not a checkout */ }
  candidates.push(path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  return candidates.find((c) => c && fs.existsSync(c));
}

const env = { ...process.env, PKG_CONFIG_PATH: pkgConfigPath() };
const pc = spawnSync('pkg-config', ['--exists', 'criu'], { env });
if (pc.error) fail(`pkg-config is missing, so CRIU's library cannot be found: ${FIX}`);
if (pc.status !== 0) fail(`no CRIU library found (pkg-config criu), so the native addon is not built: ${FIX}, or set PHAUL_FAST_CRIU_PREFIX to a CRIU install prefix and run \`npm rebuild phaul-fast\``);
const gyp = nodeGyp();
if (!gyp) fail(`node-gyp not found, so the native addon is not built: ${FIX}`);

const log = path.join(ROOT, 'build-native.log');
const out = fs.openSync(log, 'w');
const r = spawnSync(process.execPath, [gyp, 'rebuild'], { cwd: ROOT, env, stdio: ['ignore', out, out] });
fs.closeSync(out);
if (r.status !== 0) {
  const tail = fs.readFileSync(log, 'utf8').trim().split('\n').slice(-20).join('\n');
  process.stderr.write(`${tail}\n`);
  fail(`the native addon did not build (${log}): ${FIX}`);
}
fs.rmSync(log, { force: true });

// The addon finds libcriu next to itself ($ORIGIN, binding.gyp): copy the file
// the soname names (through its symlinks), so no path of this machine is baked in.
const libdir = spawnSync('pkg-config', ['--variable=libdir', 'criu'], { env, encoding: 'utf8' }).stdout.trim();
const lib = path.join(libdir, 'libcriu.so.2');
if (!fs.existsSync(lib)) fail(`${lib} not found: ${FIX}`);
fs.copyFileSync(lib, path.join(ROOT, 'build', 'Release', 'libcriu.so.2'));

const prefix = process.env.PHAUL_FAST_CRIU_PREFIX;
if (prefix && fs.existsSync(path.join(prefix, 'sbin', 'criu'))) {
  fs.mkdirSync(path.join(ROOT, '.criu'), { recursive: true });
  fs.writeFileSync(path.join(ROOT, '.criu', 'config.json'), `${JSON.stringify({ criu: path.resolve(prefix, 'sbin', 'criu') })}\n`);
}
if (INSTALL) say('native addon built');
