// native/batch_io.cc with a real process and a real socket pair: pages read
// from a running workload arrive intact, all-zero pages as zero ranges; a
// header that fails the size checks is named by the JS checks and nothing
// more is read; a write the peer does not read fails at once on abort().
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { addon } from '../src/native';
import { PhaulError } from '../src/errors';
import { rawFd } from '../src/agent/data-channel';
import { PageStore } from '../src/store/page-store';
import { attachNativeBatchStream } from '../src/transport/batch-stream';
import { encodeBatch, parseHeader, parseRanges } from '../src/transport/page-batch';
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

/** Both ends of a real loopback TCP connection, as descriptors a BatchConn may own. */
async function tcpPair(): Promise<[number, number]> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const client = net.connect(port, '127.0.0.1');
  await new Promise<void>((r) => client.once('connect', () => r()));
  const peer = await accepted;
  server.close();
  const fds: [number, number] = [addon().dupFd(rawFd(client)), addon().dupFd(rawFd(peer))];
  client.destroy();
  peer.destroy();
  return fds;
}

for (const kind of ['tcp', 'unix'] as const) {
  test(`${kind}: a batch spliced straight into the page store holds the workload's pages; a stale copy is dropped and the stream stays in step`, { skip, timeout: 60_000 }, async () => {
    const w = await startMemWorkload({ mib: 4 });
    const [a, b] = kind === 'tcp' ? await tcpPair() : addon().streamSocketPair();
    const tx = new (addon().BatchConn)(a);
    const rx = new (addon().BatchConn)(b);
    const dir = fs.mkdtempSync('/dev/shm/phaul-batch-io-');
    const store = new PageStore(path.join(dir, 'store'));
    try {
      const pairs = biggestRw(w.pid);
      const bytes = Number(pairs[1] - pairs[0]);
      store.setLayout(w.pid, [{ vaddr: pairs[0], nrPages: bytes / 4096 }]);
      const txBuf = Buffer.alloc(bytes);
      // Round 2, then an older round 1 of the same pages (dropped), then round 2 again.
      const sends = (async () => {
        for (const round of [2, 1, 2]) await tx.sendPages(w.pid, round, pairs, txBuf);
        tx.close();
      })();
      let stored = 0;
      const h = attachNativeBatchStream(rx, {
        write: () => Promise.reject(new Error('raw batches never come to write()')),
        receive: (batch, pull) => store.receive(batch, pull).then(() => { stored++; }),
      });
      await sends;
      const st = await h.done;
      assert.equal(st.batches, 3);
      assert.equal(stored, 3);
      const s = store.stats();
      assert.equal(s.pendingBatches, 0);
      assert.ok(s.stalePages > 0, 'the round 1 copy was older than the store\'s');
      assert.equal(store.firstMissing(w.pid, Number(pairs[0]) / 4096, bytes / 4096), -1);
      const direct = await readPages(w.pid, pairs);
      const back = Buffer.alloc(bytes);
      store.readPages(w.pid, Number(pairs[0]) / 4096, bytes / 4096, back);
      assert.ok(Buffer.compare(back, Buffer.from(direct.buffer)) === 0, 'the store holds the pages as they are in the workload');
    } finally {
      tx.close();
      rx.close();
      await store.destroy();
      fs.rmSync(dir, { recursive: true, force: true });
      await w.stop();
    }
  });
}

test('a raw batch whose pages lie outside the layout fails the stream before its payload is read', async () => {
  const [a, b] = addon().streamSocketPair();
  const tx = new (addon().BatchConn)(a);
  const rx = new (addon().BatchConn)(b);
  const dir = fs.mkdtempSync('/dev/shm/phaul-batch-io-');
  const store = new PageStore(path.join(dir, 'store'));
  try {
    store.setLayout(7, [{ vaddr: 0x10000, nrPages: 4 }]);
    const data = Buffer.alloc(2 * 4096, 0x5a);
    await tx.sendBuffers(encodeBatch({ pid: 7, round: 0, ranges: [{ vaddr: 0x40000, nrPages: 2 }], data }, { compress: false }));
    let pulled = false;
    const h = attachNativeBatchStream(rx, {
      write: () => Promise.reject(new Error('unexpected')),
      receive: (batch, pull) => store.receive(batch, (plan) => { pulled = true; return pull(plan); }),
    });
    await assert.rejects(h.done, (e: PhaulError) => e.code === 'protocol' && /outside its layout/.test(e.message));
    assert.equal(pulled, false, 'nothing of the payload was read into the store');
    assert.equal(store.stats().bytesWritten, 0);
  } finally {
    tx.close();
    rx.close();
    await store.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
