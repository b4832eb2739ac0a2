// The hybrid mode's page source without CRIU: a scripted lazy-pages client on
// a socketpair asks a real page store for pages with CRIU's page-server GET
// requests (both header sizes), pipelined; what the store does not hold, an
// unknown command or an early hang-up fails the service instead of answering.
// (The real daemon is exercised by test/migrate-precopy.test.ts's hybrid tests.)
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { addon } from '../src/native';
import { PageStore, defaultStoreRoot } from '../src/store/page-store';
import { serveLazyPages } from '../src/transport/lazy-page-server';
import { ChainReader } from '../src/store/chain-reader';

import { PAGE_SIZE as P } from '../src/util/page-size';
const GET = 7;
const FORCE_CLOSE = 0x1024;
const ADD_F_PRESENT = 6 | (4 << 16);

function pair(): [net.Socket, net.Socket] {
  const [a, b] = addon().streamSocketPair();
  return [new net.Socket({ fd: a, readable: true, writable: true }), new net.Socket({ fd: b, readable: true, writable: true })];
}

function header(size: 24 | 32, cmd: number, nrPages = 0, vaddr = 0, dstId = 0): Buffer {
  const b = Buffer.alloc(size);
  b.writeUInt32LE(cmd, 0);
  if (size === 24) {
    b.writeUInt32LE(nrPages, 4);
    b.writeBigUInt64LE(BigInt(vaddr), 8);
    b.writeBigUInt64LE(BigInt(dstId), 16);
  } else {
    b.writeBigUInt64LE(BigInt(nrPages), 8);
    b.writeBigUInt64LE(BigInt(vaddr), 16);
    b.writeBigUInt64LE(BigInt(dstId), 24);
  }
  return b;
}

/** Collects what the server sends, for reading in exact sizes. */
function reader(sock: net.Socket) {
  let buf = Buffer.alloc(0);
  let wake: (() => void) | null = null;
  let ended = false;
  sock.on('data', (d) => { buf = Buffer.concat([buf, d]); wake?.(); });
  sock.on('close', () => { ended = true; wake?.(); });
  return {
    async take(n: number): Promise<Buffer> {
      while (buf.length < n) {
        if (ended) throw new Error(`connection ended with ${buf.length} of ${n} bytes`);
        await new Promise<void>((r) => { wake = r; });
      }
      const out = buf.subarray(0, n);
      buf = buf.subarray(n);
      return out;
    },
  };
}

async function withStore(fn: (s: PageStore) => Promise<void>): Promise<void> {
  const dir = fs.mkdtempSync(path.join(defaultStoreRoot(1 << 30), 'phaul-lazy-test-'));
  const s = new PageStore(path.join(dir, 's'));
  try {
    await fn(s);
  } finally {
    await s.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Image id 1: 0x10000-0x13fff on level 0, 0x40000 added later (level 1). */
async function fill(s: PageStore): Promise<void> {
  s.setLayout(1, [{ vaddr: 0x10000, nrPages: 4 }]);
  await s.write({ pid: 1, round: 0, ranges: [{ vaddr: 0x10000, nrPages: 4 }],
    data: Buffer.concat([0, 1, 2, 3].map((i) => Buffer.alloc(P, 0x10 + i))) });
  s.setLayout(1, [{ vaddr: 0x40000, nrPages: 1 }]);
  await s.write({ pid: 1, round: 1, ranges: [{ vaddr: 0x40000, nrPages: 1 }], data: Buffer.alloc(P, 0x40) });
  await s.write({ pid: 1, round: 2, ranges: [{ vaddr: 0x11000, nrPages: 1, zero: true }], data: Buffer.alloc(0) });
  await s.finalizeParent();
}

for (const size of [32, 24] as const) {
  test(`GET requests (${size}-byte headers), pipelined, are answered in order from every level; FORCE_CLOSE ends it`, async () => {
    await withStore(async (s) => {
      await fill(s);
      const [ours, daemon] = pair();
      const served = serveLazyPages(ours, s, size);
      const rd = reader(daemon);
      daemon.write(Buffer.concat([header(size, GET, 3, 0x10000, 1), header(size, GET, 1, 0x40000, 1)]));
      const h1 = await rd.take(size);
      assert.equal(h1.readUInt32LE(0), ADD_F_PRESENT);
      const d1 = await rd.take(3 * P);
      assert.equal(d1[0], 0x10);
      assert.equal(d1[P], 0, 'the newest round made page 0x11000 zero');
      assert.equal(d1[2 * P + 7], 0x12);
      const h2 = await rd.take(size);
      assert.equal(Number(size === 32 ? h2.readBigUInt64LE(16) : h2.readBigUInt64LE(8)), 0x40000);
      assert.equal((await rd.take(P))[100], 0x40);
      daemon.write(header(size, FORCE_CLOSE));
      assert.equal((await rd.take(4)).readInt32LE(0), 0);
      assert.deepEqual(await served, { requests: 2, pages: 4 });
      daemon.destroy();
      ours.destroy();
    });
  });
}

test('the chain the store writes reads back the same pages, in another process\'s view (ChainReader)', async () => {
  await withStore(async (s) => {
    await fill(s);
    const top = s.writeChain(new Map([[1, 1]]));
    const chain = new ChainReader(top);
    try {
      for (const [page, n] of [[0x10, 4], [0x40, 1], [0x11, 2]]) {
        assert.equal(chain.firstMissing(1, page, n), -1);
        const a = Buffer.alloc(n * P), b = Buffer.alloc(n * P, 0xee);
        s.readPages(1, page, n, a);
        chain.readPages(1, page, n, b);
        assert.deepEqual(b, a, `pages 0x${page.toString(16)}+${n}`);
      }
      assert.equal(chain.firstMissing(1, 0x13, 2), 0x14, 'past the layout');
      assert.equal(chain.firstMissing(2, 0x10, 1), 0x10, 'unknown image');
      // Served to a scripted daemon straight from the chain.
      const [ours, daemon] = pair();
      const served = serveLazyPages(ours, chain, 32);
      const rd = reader(daemon);
      daemon.write(header(32, GET, 1, 0x40000, 1));
      await rd.take(32);
      assert.equal((await rd.take(P))[9], 0x40);
      daemon.write(header(32, FORCE_CLOSE));
      await rd.take(4);
      assert.deepEqual(await served, { requests: 1, pages: 1 });
      daemon.destroy();
      ours.destroy();
    } finally {
      chain.close();
    }
  });
});

test('a page the store does not hold, a bad request, an unknown command or an early hang-up fail the service', async () => {
  await withStore(async (s) => {
    await fill(s);
    const cases: Array<[string, (d: net.Socket) => void, RegExp]> = [
      ['missing page', (d) => d.write(header(32, GET, 2, 0x13000, 1)), /does not hold/],
      ['unknown pid', (d) => d.write(header(32, GET, 1, 0x10000, 77)), /store/],
      ['unaligned', (d) => d.write(header(32, GET, 1, 0x10001, 1)), /asked for/],
      ['huge count', (d) => d.write(header(32, GET, 2 ** 40, 0x10000, 1)), /asked for/],
      ['unknown command', (d) => d.write(header(32, 1, 1, 0x10000, 1)), /command/],
      ['hang-up', (d) => d.end(), /went away/],
    ];
    for (const [name, act, re] of cases) {
      const [ours, daemon] = pair();
      const served = serveLazyPages(ours, s, 32);
      act(daemon);
      await assert.rejects(served, re, name);
      daemon.destroy();
      ours.destroy();
    }
  });
});
