// The CRIU version cache (src/criu/version-cache.ts) against the real CRIU: an
// entry answers only for the very file it was asked of (a rewritten binary is
// asked again), a malformed file or a binary that does not answer leaves no
// trace, and no place for the cache only costs the question.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { criu, noCriu } from './helpers/criu';
import { criuVersion } from '../src/criu/libcriu';
import { criuVersionCached } from '../src/criu/version-cache';

const skip = noCriu || (process.getuid?.() !== 0 ? 'needs root (CRIU answers its version only as root)' : false);

test('a cached version answers for the same binary file only; a rewritten binary is asked again', { skip }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'phaul-version-cache-'));
  try {
    // A copy of the binary of our own, so that rewriting it touches nothing shared.
    const bin = path.join(dir, 'criu');
    fs.copyFileSync(criu!, bin);
    fs.chmodSync(bin, 0o755);
    const file = path.join(dir, 'criu-version.json');
    const real = await criuVersion({ criuBinary: bin });

    assert.deepEqual(await criuVersionCached(bin, () => file), real, 'asked, the first time');
    const entry = JSON.parse(fs.readFileSync(file, 'utf8'));
    assert.deepEqual(entry.version, real, 'and kept');

    // A planted answer under the same key is what comes back: the binary was not asked.
    const planted = { major: 9, minor: 8, sublevel: 7, code: 90807 };
    fs.writeFileSync(file, JSON.stringify({ key: entry.key, version: planted }));
    assert.deepEqual(await criuVersionCached(bin, () => file), planted, 'the cache answers for the same file');

    // Through a symbolic link: the same file, the same entry.
    const link = path.join(dir, 'criu-link');
    fs.symlinkSync(bin, link);
    assert.deepEqual(await criuVersionCached(link, () => file), planted, 'a link to the same file');

    // The file rewritten (here only its times: its change time moves with any write).
    const later = new Date(Date.now() + 5_000);
    fs.utimesSync(bin, later, later);
    assert.deepEqual(await criuVersionCached(bin, () => file), real, 'a rewritten binary is asked again');
    assert.deepEqual(JSON.parse(fs.readFileSync(file, 'utf8')).version, real, 'and its answer replaces the entry');

    // An entry that does not hold together is no entry.
    for (const bad of ['{', JSON.stringify({ key: JSON.parse(fs.readFileSync(file, 'utf8')).key, version: { major: 4, minor: 2, sublevel: 1, code: 1 } })]) {
      fs.writeFileSync(file, bad);
      assert.deepEqual(await criuVersionCached(bin, () => file), real, `malformed entry ${bad.slice(0, 40)} ignored`);
    }

    // No place for the cache: asked, nothing thrown.
    assert.deepEqual(await criuVersionCached(bin, () => { throw new Error('read-only /run'); }), real);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a binary that does not answer fails as before and leaves no entry', { skip: noCriu || false }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'phaul-version-cache-'));
  try {
    const bin = path.join(dir, 'criu');
    fs.writeFileSync(bin, '#!/bin/sh\nexit 1\n', { mode: 0o755 });
    const file = path.join(dir, 'criu-version.json');
    await assert.rejects(criuVersionCached(bin, () => file));
    assert.equal(fs.existsSync(file), false, 'no entry for a binary that did not answer');
    await assert.rejects(criuVersionCached(path.join(dir, 'none'), () => file), 'no binary at all');
    assert.equal(fs.existsSync(file), false);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
