// The addon loader (src/native/index.ts): nothing loads the addon at import
// time, and when it cannot load, the CLI says in one line what to run instead
// of printing a stack. The failures here are real: a missing file and a file
// that is not a shared object, pointed at through $PHAUL_FAST_ADDON.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { addon, addonStatus, explainLoadFailure } from '../src/native';
import * as ranges from '../src/memory/ranges';

const MAIN = path.join(__dirname, '..', 'src', 'cli', 'main.js');

function cli(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [MAIN, ...args], { timeout: 120_000, env: { ...process.env, ...env } }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

const NO_STACK = /^\s+at |Error: |node:internal/m;

test('the built addon loads through the loader', () => {
  const st = addonStatus();
  assert.ok(st.ok, st.ok ? '' : st.problem);
});

test('without the addon: check exits 3 with one line on what to run first; --help works', async () => {
  const env = { PHAUL_FAST_ADDON: '/nonexistent/phaul_fast.node' };
  const r = await cli(['check'], env);
  assert.equal(r.code, 3, r.stderr);
  const lines = r.stderr.trim().split('\n');
  assert.match(lines[0]!, /^phaul-fast check: the native addon is not built \(no \/nonexistent\/phaul_fast\.node\): run `npx phaul-fast setup` as root/);
  assert.doesNotMatch(r.stderr, NO_STACK);
  assert.equal(r.stdout, '');

  const j = await cli(['check', '--json'], env);
  assert.equal(j.code, 3);
  const rep = JSON.parse(j.stdout.trim()) as { addon: { ok: boolean }; missing: string[] };
  assert.equal(rep.addon.ok, false);
  assert.match(rep.missing[0]!, /native addon is not built/);

  for (const args of [['--help'], ['migrate', '--help'], ['serve', '--help'], ['check', '--help']]) {
    const h = await cli(args, env);
    assert.equal(h.code, 0, `${args.join(' ')}: ${h.stderr}`);
    assert.match(h.stdout, /usage: phaul-fast/);
  }
});

test('an addon that is not a shared object: one line, exit 3, no stack', async () => {
  const r = await cli(['check'], { PHAUL_FAST_ADDON: '/etc/hostname' });
  assert.equal(r.code, 3, r.stderr);
  assert.match(r.stderr.split('\n')[0]!, /^phaul-fast check: the native addon does not load \(.*\): run `npx phaul-fast setup`/);
  assert.doesNotMatch(r.stderr, NO_STACK);
});

test('an addon built for another Node ABI is named as such (Node\'s own message)', () => {
  const msg = `The module '${__filename}'\nwas compiled against a different Node.js version using\nNODE_MODULE_VERSION 108. This version of Node.js requires\nNODE_MODULE_VERSION 115. Please try re-compiling or re-installing\nthe module (for instance, using \`npm rebuild\` or \`npm install\`).`;
  const line = explainLoadFailure(__filename, new Error(msg));
  assert.match(line, /^the native addon was built for another Node\.js \(ABI 108; this Node v\d+\.\d+\.\d+ needs 115\): rebuild it: run `npx phaul-fast setup`/);
  assert.doesNotMatch(line, /\n/);
});

test('the range and VMA flags src/memory/ranges.ts names are the addon\'s', () => {
  const c = addon().dirtyConstants;
  const ts: Record<string, number> = {
    RANGE_PRESENT: ranges.RANGE_PRESENT, RANGE_SWAPPED: ranges.RANGE_SWAPPED, RANGE_ZERO: ranges.RANGE_ZERO,
    VMA_READ: ranges.VMA_READ, VMA_WRITE: ranges.VMA_WRITE, VMA_EXEC: ranges.VMA_EXEC, VMA_SHARED: ranges.VMA_SHARED,
    VMA_FILE: ranges.VMA_FILE, VMA_SPECIAL: ranges.VMA_SPECIAL, VMA_TRACKED: ranges.VMA_TRACKED,
  };
  assert.deepEqual(ts, { ...c });
});

test('makeFifo makes an owner-only FIFO (CRIU\'s log gate), and names the path when it cannot', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pf-fifo-'));
  try {
    const p = path.join(dir, 'dump.log');
    addon().makeFifo(p, 0o600);
    const st = fs.statSync(p);
    assert.ok(st.isFIFO());
    assert.equal(st.mode & 0o777, 0o600);
    assert.throws(() => addon().makeFifo(p, 0o600), (e: Error) => /mkfifo .*dump\.log: File exists/.test(e.message));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
