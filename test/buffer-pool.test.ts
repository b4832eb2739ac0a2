// BufferPool: buffers are handed out again after release, at most `max` exist,
// and acquire waits for a release beyond that.
import * as fs from 'node:fs';
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { BufferPool } from '../src/transport/buffer-pool';

test('a released buffer is handed out again; no more than max exist; acquire waits for a release', async () => {
  const pool = new BufferPool(8192, 2);
  const a = await pool.acquire();
  const b = await pool.acquire();
  assert.equal(a.length, 8192);
  assert.ok(a.buffer !== b.buffer);
  assert.equal(pool.tryAcquire(), undefined, 'a third buffer is not created');
  let got: Buffer | undefined;
  const waiting = pool.acquire().then((x) => { got = x; });
  await new Promise((r) => setImmediate(r));
  assert.equal(got, undefined, 'acquire waits while max are in use');
  pool.release(a.subarray(0, 4096)); // a view of a pooled buffer gives back the whole buffer
  await waiting;
  assert.ok(got!.buffer === a.buffer);
  assert.equal(got!.length, 8192);
  assert.equal(pool.inUse, 2);
  pool.release(b);
  pool.release(got!);
  assert.equal(pool.inUse, 0);
  assert.ok(pool.tryAcquire()!.buffer === a.buffer, 'the most recently released first (still warm)');
});

test('a buffer the pool did not give out is refused', () => {
  const pool = new BufferPool(4096, 1);
  assert.throws(() => pool.release(Buffer.alloc(100)), /did not give out/);
  assert.throws(() => new BufferPool(0, 1), /bad size/);
});

test('allocPageBuffer: zero-filled memory of its own, huge pages where THP allows; bad sizes refused', () => {
  const { addon } = require('../src/native') as typeof import('../src/native');
  const size = 4 << 20;
  const b = addon().allocPageBuffer(size);
  assert.equal(b.length, size);
  assert.equal(b.byteOffset, 0);
  assert.equal(b.buffer.byteLength, size, 'a buffer of its own, not a slice of a shared slab');
  assert.ok(b.every((x) => x === 0), 'zero-filled');
  b.fill(7, size - 10);
  assert.equal(b[size - 1], 7);
  const odd = addon().allocPageBuffer(5000);
  assert.equal(odd.length, 5000);
  odd[4999] = 1;
  for (const bad of [0, -1, 1.5, 2 ** 31, Number.NaN]) {
    assert.throws(() => addon().allocPageBuffer(bad), /size must be an integer/, String(bad));
  }
  const thp = (() => { try { return fs.readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8'); } catch { return ''; } })();
  if (!/\[(always|madvise)\]/.test(thp)) return; // THP off: 4 KiB pages, nothing more to check
  // Advised for huge pages (VmFlags `hg`), the whole 4 MiB: whether the kernel has huge pages free at the moment is its affair.
  const held = addon().allocPageBuffer(size);
  const advised = fs.readFileSync('/proc/self/smaps', 'utf8').split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/)
    .filter((e) => /^VmFlags:.* hg/m.test(e)).map((e) => Number(/^Size:\s+(\d+) kB/m.exec(e)?.[1]));
  assert.ok(advised.some((kb) => kb >= size / 1024), `no mapping of ${size / 1024} kB advised for huge pages: ${advised}`);
  assert.equal(held.length, size);
});
