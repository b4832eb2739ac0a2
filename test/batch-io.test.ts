// native/batch_io.cc with a real process and a real socket pair: pages read
// from a running workload arrive intact, all-zero pages as zero ranges; a
// header that fails the size checks is named by the JS checks and nothing
// more is read; a write the peer does not read fails at once on abort().
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { addon, type NativeBatchConn } from '../src/native';
import { PhaulError } from '../src/errors';
import { rawFd } from '../src/agent/data-channel';
import { PageStore } from '../src/store/page-store';
import { attachNativeBatchStream } from '../src/transport/batch-stream';
import { encodeBatch, parseHeader, parseRanges } from '../src/transport/page-batch';
import { readPages } from '../src/memory/read-pages';
import { type MemWorkload, startMemWorkload } from '../src/testing/workload';

const root = process.getuid?.() === 0;
const skip = root ? false : 'needs root (process_vm_readv of another process)';

/**
 * The workload's own page buffer (its report's address, its size), as one
 * [start, end) pair. Not "the biggest private writable mapping": about one
 * start in 330 the kernel merges the buffer with the 3 pages below libc that
 * hold the main thread's TLS, whose rseq area the kernel rewrites whenever the
 * thread moves between CPUs, so two reads of that mapping may differ.
 */
function workloadBuffer(w: MemWorkload): BigUint64Array {
  const r = w.lastReport();
  assert.ok(r && /^0x[0-9a-f]+$/.test(r.addr), 'the workload reported its buffer');
  const start = BigInt(r.addr);
  return BigUint64Array.of(start, start + BigInt(w.mib) * (1n << 20n));
}

test('a batch read from a workload arrives intact, all-zero pages as zero ranges', { skip, timeout: 60_000 }, async () => {
  const w = await startMemWorkload({ mib: 4 });
  const [a, b] = addon().streamSocketPair();
  const tx = new (addon().BatchConn)(a);
  const rx = new (addon().BatchConn)(b);
  try {
    const pairs = workloadBuffer(w);
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

interface StoreRig {
  w: Awaited<ReturnType<typeof startMemWorkload>>;
  tx: NativeBatchConn;
  rx: NativeBatchConn;
  store: PageStore;
  /** The workload's page buffer, which the store's layout covers. */
  start: bigint;
  end: bigint;
}

/** A 4 MiB workload, a connection pair of `kind` (tcp: with MACs, as the agents run plain TCP) and a store laid out for its page buffer; all cleaned up after. */
async function withStoreRig(kind: 'tcp' | 'unix', body: (r: StoreRig) => Promise<void>): Promise<void> {
  const w = await startMemWorkload({ mib: 4 });
  const [a, b] = kind === 'tcp' ? await tcpPair() : addon().streamSocketPair();
  const tx = new (addon().BatchConn)(a);
  const rx = new (addon().BatchConn)(b);
  if (kind === 'tcp') {
    // Every batch with its MAC, checked from the store's files.
    const key = crypto.randomBytes(32);
    tx.setMacKey(key);
    rx.setMacKey(key);
  }
  const dir = fs.mkdtempSync('/dev/shm/phaul-batch-io-');
  const store = new PageStore(path.join(dir, 'store'));
  try {
    const [start, end] = workloadBuffer(w);
    store.setLayout(w.pid, [{ vaddr: start, nrPages: Number(end - start) / 4096 }]);
    await body({ w, tx, rx, store, start, end });
  } finally {
    tx.close();
    rx.close();
    await store.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
    await w.stop();
  }
}

/** The store holds [start, end) of the rig's workload as it is in the workload. */
async function assertStoreHolds({ w, store, start, end }: StoreRig): Promise<void> {
  const n = Number(end - start) / 4096;
  assert.equal(store.firstMissing(w.pid, Number(start) / 4096, n), -1);
  const direct = await readPages(w.pid, BigUint64Array.of(start, end));
  const back = Buffer.alloc(n * 4096);
  store.readPages(w.pid, Number(start) / 4096, n, back);
  assert.equal(direct.missing.length, 0, 'the workload\'s pages were all readable');
  const bad: number[] = [];
  for (let i = 0; i < n; i++) if (back.compare(direct.buffer, i * 4096, (i + 1) * 4096, i * 4096, (i + 1) * 4096) !== 0) bad.push(i);
  const zero = (b: Uint8Array, i: number) => b.subarray(i * 4096, (i + 1) * 4096).every((x) => x === 0);
  assert.deepEqual(bad.slice(0, 8).map((i) => `page ${i}${zero(back, i) ? ' (zeros in the store)' : ''}${zero(direct.buffer, i) ? ' (zeros in the workload)' : ''}`), [],
    `the store holds the pages as they are in the workload (${bad.length} of ${n} differ)`);
}

/** Receives the rx end of a rig into its store; `stored` counts the batches stored. */
function receiveIntoStore(r: StoreRig) {
  const counts = { stored: 0 };
  const h = attachNativeBatchStream(r.rx, {
    write: () => Promise.reject(new Error('raw batches never come to write()')),
    receive: (batch, pull) => r.store.receive(batch, pull).then(() => { counts.stored++; }),
  });
  return { counts, done: h.done };
}

for (const kind of ['tcp', 'unix'] as const) {
  test(`${kind === 'tcp' ? 'tcp with MACs' : kind}: a batch spliced straight into the page store holds the workload's pages; a stale copy is dropped and the stream stays in step`, { skip, timeout: 60_000 }, () =>
    withStoreRig(kind, async (r) => {
      const pairs = BigUint64Array.of(r.start, r.end);
      const txBuf = Buffer.alloc(Number(r.end - r.start));
      // Round 2, then an older round 1 of the same pages (dropped), then round 2 again.
      const sends = (async () => {
        for (const round of [2, 1, 2]) await r.tx.sendPages(r.w.pid, round, pairs, txBuf);
        r.tx.close();
      })();
      const rcv = receiveIntoStore(r);
      await sends;
      const st = await rcv.done;
      assert.equal(st.batches, 3);
      assert.equal(rcv.counts.stored, 3);
      const s = r.store.stats();
      assert.equal(s.pendingBatches, 0);
      assert.ok(s.stalePages > 0, 'the round 1 copy was older than the store\'s');
      await assertStoreHolds(r);
    }));
}

test('one sendPages call writes the pairs as batches of at most its buffer, pairs split between them; all arrive intact', { skip, timeout: 60_000 }, () =>
  withStoreRig('tcp', async (r) => {
    const { start: s, end: e } = r;
    const bytes = Number(e - s);
    // Three pairs, the middle one a single page, and a buffer that is no multiple of them (or of 4 KiB).
    const mid = s + 4096n * 37n;
    const pairs = BigUint64Array.of(s, mid, mid, mid + 4096n, mid + 4096n, e);
    const txBuf = Buffer.alloc((1 << 20) + 3 * 4096 + 100);
    const cap = Math.floor(txBuf.length / 4096) * 4096;
    const rcv = receiveIntoStore(r);
    const sent = await r.tx.sendPages(r.w.pid, 1, pairs, txBuf);
    r.tx.close();
    const st = await rcv.done;
    assert.equal(sent.batches, Math.ceil(bytes / cap), 'one batch per buffer\'s worth of pages');
    assert.equal(st.batches, sent.batches);
    assert.equal(rcv.counts.stored, sent.batches);
    assert.equal(sent.pages, bytes / 4096);
    await assertStoreHolds(r);
    const [c, d] = addon().streamSocketPair();
    const tx2 = new (addon().BatchConn)(c);
    await assert.rejects(tx2.sendPages(r.w.pid, 1, BigUint64Array.of(s + 100n, e), txBuf), /page-aligned/);
    await assert.rejects(tx2.sendPages(r.w.pid, 1, BigUint64Array.of(e, s), txBuf), /page-aligned/);
    tx2.close();
    addon().closeFd(d);
  }));

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

/** Everything written to a BatchConn, as the bytes on the wire. */
async function wireOf(send: (tx: NativeBatchConn) => Promise<void>, key?: Buffer): Promise<Buffer> {
  const [a, b] = addon().streamSocketPair();
  const tx = new (addon().BatchConn)(a);
  if (key) tx.setMacKey(key);
  const sock = new net.Socket({ fd: b, readable: true, writable: false });
  const chunks: Buffer[] = [];
  const ended = new Promise<void>((r) => sock.on('end', r));
  sock.on('data', (c) => chunks.push(c));
  await send(tx);
  tx.close();
  await ended;
  sock.destroy();
  return Buffer.concat(chunks);
}

/** Feeds wire bytes to a receiving BatchConn with `key` into a fresh store; the stream's outcome. */
async function receiveWire(wire: Buffer, key: Buffer): Promise<{ batches: number; pages: number } | PhaulError> {
  const [c, d] = addon().streamSocketPair();
  const rx = new (addon().BatchConn)(d);
  rx.setMacKey(key);
  const dir = fs.mkdtempSync('/dev/shm/phaul-batch-io-');
  const store = new PageStore(path.join(dir, 'store'));
  const feeder = new net.Socket({ fd: c, readable: false, writable: true });
  try {
    store.setLayout(7, [{ vaddr: 0x10000, nrPages: 8 }]);
    feeder.end(wire);
    const h = attachNativeBatchStream(rx, {
      write: (b) => store.write(b),
      receive: (b, pull) => store.receive(b, pull),
    });
    const st = await h.done;
    return { batches: st.batches, pages: store.stats().pagesWritten };
  } catch (e) {
    return e as PhaulError;
  } finally {
    feeder.destroy();
    rx.close();
    await store.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test('page batches with MACs: intact ones are stored; altered, replayed, dropped or untagged ones fail the stream as a protocol error', async () => {
  const key = crypto.randomBytes(32);
  const batch = (round: number, fill: number) => encodeBatch({ pid: 7, round, ranges: [{ vaddr: 0x10000, nrPages: 2 }, { vaddr: 0x12000, nrPages: 1, zero: true }], data: Buffer.alloc(2 * 4096, fill) }, { compress: false });
  const b1 = await wireOf((tx) => tx.sendBuffers(batch(0, 1)), key);
  const both = await wireOf(async (tx) => { await tx.sendBuffers(batch(0, 1)); await tx.sendBuffers(batch(1, 2)); }, key);
  assert.equal(b1.length, 32 + 2 * 16 + 2 * 4096 + 16, 'header, ranges, payload, tag');
  assert.ok(both.subarray(0, b1.length).equals(b1), 'the first batch has the same bytes and tag on both connections (same key, same sequence number)');

  assert.deepEqual(await receiveWire(both, key), { batches: 2, pages: 4 });

  const bad = (r: unknown) => r instanceof PhaulError && r.code === 'protocol' && /failed authentication/.test(r.message);
  const flipped = (at: number) => { const w = Buffer.from(both); w[at] ^= 1; return w; };
  assert.ok(bad(await receiveWire(flipped(32 + 32 + 100), key)), 'a bit of the payload');
  assert.ok(bad(await receiveWire(flipped(12), key)), 'the round in the header (still a valid header)');
  assert.ok(bad(await receiveWire(flipped(b1.length - 1), key)), 'the tag');
  assert.ok(bad(await receiveWire(Buffer.concat([b1, b1]), key)), 'a replayed batch');
  assert.ok(bad(await receiveWire(both.subarray(b1.length), key)), 'the first batch dropped');
  assert.ok(bad(await receiveWire(both, crypto.randomBytes(32))), 'another key');
  const untagged = await wireOf((tx) => tx.sendBuffers(batch(0, 1)));
  const r = await receiveWire(untagged, key);
  assert.ok(r instanceof PhaulError, 'a batch without a tag is not accepted');
});
