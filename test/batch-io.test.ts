// native/batch_io.cc with a real process and a real socket pair: pages read
// from a running workload arrive intact, all-zero pages as zero ranges; a
// header that fails the size checks is named by the JS checks and nothing
// more is read; a write the peer does not read fails at once on abort().
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { addon } from '../src/native';
import { parseHeader, parseRanges } from '../src/transport/page-batch';
import { readPages } from '../src/memory/read-pages';
import { startMemWorkload } from '../src/testing/workload';

const root = process.getuid?.() === 0;
const skip = root ? false : 'needs root (process_vm_readv of another process)';

/** The largest private writable mapping of pid, as one [start, end) pair. */
function biggestRw(pid: number): BigUint64Array {
  let best: [bigint, bigint] = [0n, 0n];
  for (const line of fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) rw-p /.exec(line);
    if (!m) continue;
    const s = BigInt(`0x${m[1]}`), e = BigInt(`0x${m[2]}`);
    if (e - s > best[1] - best[0]) best = [s, e];
  }
  return BigUint64Array.from(best);
}

test('a batch read from a workload arrives intact, all-zero pages as zero ranges', { skip, timeout: 60_000 }, async () => {
  const w = await startMemWorkload({ mib: 4 });
  const [a, b] = addon().streamSocketPair();
  const tx = new (addon().BatchConn)(a);
  const rx = new (addon().BatchConn)(b);
  try {
    const pairs = biggestRw(w.pid);
    const bytes = Number(pairs[1] - pairs[0]);
    const txBuf = Buffer.alloc(bytes);
    const rxBuf = Buffer.alloc(bytes);
    const [sent, got] = await Promise.all([tx.sendPages(w.pid, 3, pairs, txBuf), rx.read(rxBuf)]);
    assert.ok(!got.end && got.ranges);
    const h = parseHeader(got.head);
    assert.equal(h.pid, w.pid);
    assert.equal(h.round, 3);
    assert.equal(sent.pages, bytes / 4096);
    assert.ok(got.inBuffer);
    const ranges = parseRanges(h, got.ranges);
    // Rebuild the mapping from the batch and compare it with a direct read.
    const direct = await readPages(w.pid, pairs);
    const rebuilt = Buffer.alloc(bytes);
    let off = 0;
    for (const r of ranges) {
      const at = Number(r.vaddr) - Number(pairs[0]);
      if (!r.zero) {
        rxBuf.copy(rebuilt, at, off, off + r.nrPages * 4096);
        off += r.nrPages * 4096;
      }
    }
    assert.equal(off, h.rawLen);
    assert.equal(sent.zeroPages, ranges.filter((r) => r.zero).reduce((n, r) => n + r.nrPages, 0));
    assert.ok(Buffer.compare(rebuilt, Buffer.from(direct.buffer)) === 0, 'the pages arrive as they are in the workload');
    tx.close();
    assert.deepEqual(await rx.read(rxBuf), { end: true }, 'the end of the stream between batches is a clean end');
  } finally {
    tx.close();
    rx.close();
    await w.stop();
  }
});

test('a header out of bounds: nothing more is read, and parseHeader says what is wrong', async () => {
  const [a, b] = addon().streamSocketPair();
  const tx = new (addon().BatchConn)(a);
  const rx = new (addon().BatchConn)(b);
  try {
    const head = Buffer.alloc(32);
    head.writeUInt32LE(0x42504650, 0);
    head[4] = 1;
    head.writeUInt32LE(1, 8);
    head.writeUInt32LE(1 << 20, 16); // a million ranges: more than a batch may have
    await tx.sendBuffers([head]);
    const got = await rx.read(Buffer.alloc(4096));
    assert.ok(!got.end && !got.ranges, 'no ranges read for a header out of bounds');
    assert.throws(() => parseHeader(got.head), /ranges/);
  } finally {
    tx.close();
    rx.close();
  }
});

test('a write the peer does not read fails at once on abort()', async () => {
  const [a, b] = addon().streamSocketPair();
  const tx = new (addon().BatchConn)(a);
  try {
    const big = Buffer.alloc(64 << 20);
    const p = tx.sendBuffers([big]);
    await new Promise((r) => setTimeout(r, 300));
    tx.abort();
    await assert.rejects(p, (e: Error & { reason?: string }) => e.reason === 'network');
  } finally {
    tx.close();
    addon().closeFd(b);
  }
});
