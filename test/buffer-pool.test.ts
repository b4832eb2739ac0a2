// BufferPool: buffers are handed out again after release, at most `max` exist,
// and acquire waits for a release beyond that.
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
