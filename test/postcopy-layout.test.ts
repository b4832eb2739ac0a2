// Postcopy's page numbering and the destination's checks on what arrives,
// without CRIU: pagemap images written by hand (the format CRIU's lazy dump
// writes: lazy entries PE_LAZY, the rest PE_PRESENT), a pages file in a temp
// directory, and a socket pair standing in for the lazy-pages server's end of
// the control socket. The real path is test/migrate-postcopy.test.ts.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { addon } from '../src/native';
import { PostcopyLayout } from '../src/postcopy/layout';
import { PostcopyReceiver } from '../src/postcopy/destination';
import { PE_LAZY, PE_PRESENT, writePagemapImage } from '../src/store/pagemap-image';

const P = 4096;

function images(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'phaul-postcopy-layout-'));
  // Image 12 before image 7 on disk order does not matter: ids ascend.
  writePagemapImage(path.join(dir, 'pagemap-12.img'), { pagesId: 12, entries: [
    { vaddr: 0x10000, nrPages: 2, flags: PE_LAZY, inParent: false },
    { vaddr: 0x20000, nrPages: 1, flags: PE_PRESENT, inParent: false },
    { vaddr: 0x30000, nrPages: 3, flags: PE_LAZY, inParent: false },
  ] });
  writePagemapImage(path.join(dir, 'pagemap-7.img'), { pagesId: 7, entries: [
    { vaddr: 0x400000, nrPages: 4, flags: PE_LAZY, inParent: false },
  ] });
  return dir;
}

test('both ends number the lazy pages alike: image by image, address by address; present pages are left out', () => {
  const dir = images();
  try {
    const l = PostcopyLayout.read(dir);
    assert.equal(l.pages, 9);
    assert.deepEqual(l.runs.map((r) => [r.id, r.vaddr, r.page, r.pages]), [[7, 0x400000, 0, 4], [12, 0x10000, 4, 2], [12, 0x30000, 6, 3]]);
    assert.equal(l.pageOf(12, 0x31000), 7);
    assert.equal(l.pageOf(12, 0x20000), -1, 'a present page has no index');
    assert.equal(l.pageOf(3, 0x10000), -1, 'nor an unknown image');
    assert.equal(l.runAt(5)!.vaddr, 0x10000);
    assert.equal(l.runAt(9), undefined);
    assert.deepEqual([...l.pieces(3, 5)].map((x) => [x.run.id, x.page, x.pages]), [[7, 3, 1], [12, 4, 2], [12, 6, 2]]);
    assert.deepEqual([...l.pieces(8, 10)].map((x) => [x.page, x.pages]), [[8, 1]], 'cut at the end');
    const fill = l.fillImages();
    assert.deepEqual(Array.from(fill.find((f) => f.id === 12)!.extents), [0x10000, 0x12000, 0, 4 * P, 0x30000, 0x33000, 0, 6 * P]);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the destination writes each page into its slot once, says it present, and refuses pages that are not lazy ones', async () => {
  const dir = images();
  const [a, b] = addon().streamSocketPair();
  const ours = new net.Socket({ fd: a, readable: true, writable: true });
  const server = new net.Socket({ fd: b, readable: true, writable: true });
  let said = Buffer.alloc(0);
  server.on('data', (d: Buffer) => { said = Buffer.concat([said, d]); });
  const needs: number[][] = [];
  const rx = new PostcopyReceiver(PostcopyLayout.read(dir), dir, new Map([[4321, 12]]), ours, (page, pages) => needs.push([page, pages]));
  try {
    const data = Buffer.alloc(2 * P, 0xab);
    await rx.write({ pid: 4321, round: 0, ranges: [{ vaddr: 0x31000, nrPages: 1 }, { vaddr: 0x32000, nrPages: 1, zero: true }, { vaddr: 0x10000, nrPages: 1 }], data });
    // Again: already there, nothing written or said.
    await rx.write({ pid: 4321, round: 0, ranges: [{ vaddr: 0x31000, nrPages: 1 }], data: Buffer.alloc(P, 0xcd) });
    assert.equal(rx.receivedPages, 3);
    const file = fs.readFileSync(rx.file);
    assert.equal(file.length, 9 * P);
    assert.equal(file[7 * P], 0xab);
    assert.equal(file[8 * P], 0, 'a zero page stays a hole');
    assert.equal(file[4 * P + 100], 0xab);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(said.length, 3 * 24, 'three runs said present');
    const recs = [0, 1, 2].map((i) => [said.readUInt32LE(i * 24), Number(said.readBigUInt64LE(i * 24 + 8)) / P, Number(said.readBigUInt64LE(i * 24 + 16)) / P]);
    assert.deepEqual(recs, [[1, 7, 1], [1, 8, 1], [1, 4, 1]]);
    // What the server asks for comes back as (page, pages).
    const need = Buffer.alloc(24);
    need.writeUInt32LE(2, 0);
    need.writeBigUInt64LE(BigInt(5 * P), 8);
    need.writeBigUInt64LE(BigInt(3 * P), 16);
    server.write(need);
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(needs, [[5, 3]]);
    await assert.rejects(rx.write({ pid: 999, round: 0, ranges: [{ vaddr: 0x10000, nrPages: 1 }], data: Buffer.alloc(P) }), /pid 999/);
    await assert.rejects(rx.write({ pid: 4321, round: 0, ranges: [{ vaddr: 0x20000, nrPages: 1 }], data: Buffer.alloc(P) }), /not lazy pages/);
    await assert.rejects(rx.write({ pid: 4321, round: 0, ranges: [{ vaddr: 0x30000, nrPages: 4 }], data: Buffer.alloc(4 * P) }), /not lazy pages/, 'past its run');
    await assert.rejects(rx.write({ pid: 4321, round: 0, ranges: [{ vaddr: 0x11000, nrPages: 1 }], data: Buffer.alloc(0) }), /less data/);
  } finally {
    rx.close();
    ours.destroy();
    server.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
