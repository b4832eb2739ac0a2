// docs/DESIGN.md section 6 end to end on one machine, with real CRIU and real processes,
// but without the dirty tracker: this test is its own source. Round 0 reads
// the workload's present pages through /proc/PID/mem into the store; the
// "final round" is taken after CRIU's lazy dump froze the tree, and holds
// exactly the pages whose content differs from the store's copy (plus pages
// the store never had), found by comparing all memory: the dirty set a
// perfect tracker would report, found in O(memory) by the test (not timed as
// pause). Then the composer makes the lazy images restorable, a plain
// `criu restore` runs (under a timeout), and the restored workload verifies
// every one of its pages.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PhaulError } from '../src/errors';
import { addon } from '../src/native';
import { composeImages } from '../src/store/compose';
import { PageStore, defaultStoreRoot, type PageRange } from '../src/store/page-store';
import { PE_LAZY, PE_PARENT, PE_PRESENT, readPagemapImage, writePagemapImage } from '../src/store/pagemap-image';
import { criu as criuFound, noCriu } from './helpers/criu';
import { isAlive, killPids, procState, runCmd, signal, sleep } from '../src/testing/proc';
import { startMemWorkload } from '../src/testing/workload';

import { PAGE_SIZE as P } from '../src/util/page-size';
const BASE = defaultStoreRoot(4 * 2 ** 30);
const ZERO_PAGE = Buffer.alloc(P);

function tmp(tag: string): string {
  return fs.mkdtempSync(path.join(BASE, `phaul-compose-${tag}-`));
}

// ---- the test's own page source: /proc/PID/maps, /proc/PID/pagemap, /proc/PID/mem

interface Vma { start: number; end: number; name: string }

/** What CRIU may dump lazily: private anonymous VMAs (we also need them readable to copy them). */
function lazyVmas(pid: number): Vma[] {
  const out: Vma[] = [];
  for (const line of fs.readFileSync(`/proc/${pid}/maps`, 'utf8').trim().split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ (\d+)\s*(.*)$/.exec(line);
    if (!m) continue;
    const [, s, e, perms, inode, name] = m;
    if (perms[0] !== 'r' || perms[3] !== 'p' || inode !== '0') continue;
    if (name && name !== '[heap]' && name !== '[stack]') continue; // vdso, vvar, ...: never lazy
    out.push({ start: parseInt(s, 16), end: parseInt(e, 16), name });
  }
  return out;
}

/** Present (or swapped) page runs of a VMA, as [startPage, endPage). */
function presentRuns(pid: number, v: Vma): Array<[number, number]> {
  const n = (v.end - v.start) / P;
  const buf = Buffer.alloc(n * 8);
  const fd = fs.openSync(`/proc/${pid}/pagemap`, 'r');
  try {
    fs.readSync(fd, buf, 0, buf.length, (v.start / P) * 8);
  } finally {
    fs.closeSync(fd);
  }
  const runs: Array<[number, number]> = [];
  for (let i = 0; i < n; i++) {
    const hi = buf.readUInt32LE(i * 8 + 4);
    if (!(hi & 0xc0000000)) continue; // bit 63 present, bit 62 swapped
    const p = v.start / P + i;
    const last = runs[runs.length - 1];
    if (last && last[1] === p) last[1]++;
    else runs.push([p, p + 1]);
  }
  return runs;
}

interface RoundResult { pages: number; sent: number; zero: number; storeMs: number }

/**
 * Reads the given runs and writes them to the store as one round, 1024 pages
 * per batch. onlyChanged: send only pages that differ from the store's copy
 * (or that it lacks). skip: page numbers never sent (to make the store miss them).
 */
async function sendRound(store: PageStore, pid: number, round: number, runs: Array<[number, number]>,
  opts: { onlyChanged?: boolean; skip?: Set<number> } = {}): Promise<RoundResult> {
  const res: RoundResult = { pages: 0, sent: 0, zero: 0, storeMs: 0 };
  const CH = 1024;
  const buf = Buffer.alloc(CH * P);
  const mine = Buffer.alloc(CH * P);
  const fd = fs.openSync(`/proc/${pid}/mem`, 'r');
  try {
    for (const [s, e] of runs) {
      for (let p0 = s; p0 < e; p0 += CH) {
        const n = Math.min(CH, e - p0);
        readFull(fd, buf, n * P, p0 * P);
        res.pages += n;
        const ranges: PageRange[] = [];
        const chunks: Buffer[] = [];
        for (let i = 0; i < n; i++) {
          const p = p0 + i;
          if (opts.skip?.has(p)) continue;
          const pg = buf.subarray(i * P, (i + 1) * P);
          if (opts.onlyChanged && store.firstMissing(pid, p, 1) < 0) {
            store.readPages(pid, p, 1, mine);
            if (pg.equals(mine.subarray(0, P))) continue;
          }
          const zero = pg.equals(ZERO_PAGE);
          const last = ranges[ranges.length - 1];
          if (last && !!last.zero === zero && Number(last.vaddr) / P + last.nrPages === p) last.nrPages++;
          else ranges.push({ vaddr: p * P, nrPages: 1, zero });
          if (zero) res.zero++;
          else chunks.push(pg);
          res.sent++;
        }
        if (!ranges.length) continue;
        const t = performance.now();
        await store.write({ pid, round, ranges, data: Buffer.concat(chunks) });
        res.storeMs += performance.now() - t;
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return res;
}

function readFull(fd: number, buf: Buffer, len: number, pos: number): void {
  let done = 0;
  while (done < len) {
    const n = fs.readSync(fd, buf, done, len - done, pos + done);
    if (n <= 0) throw new Error(`short read of process memory at 0x${(pos + done).toString(16)}`);
    done += n;
  }
}

/** Layout = whole VMAs; round data = their present pages. */
function runsOf(pid: number, vmas: Vma[]): Array<[number, number]> {
  return vmas.flatMap((v) => presentRuns(pid, v));
}

// ---- CRIU: the lazy dump (socketpair page-server socket, status fd) and a plain restore

interface LazyDump {
  /** Resolves when CRIU wrote the images and froze the tree (status byte). */
  ready: Promise<void>;
  /** Ends the dump as a commit: close our end of its page-server socket. Resolves with criu's exit code. */
  commit(): Promise<number | null>;
  /** Ends the dump as a rollback: SIGALRM, the tasks resume. */
  rollback(): Promise<number | null>;
  log(): string;
  readyMs: number;
}

function startLazyDump(criu: string, pid: number, dir: string): LazyDump {
  const [mine, theirs] = addon().streamSocketPair();
  const t0 = performance.now();
  const child = spawn(criu, ['dump', '-t', String(pid), '-D', dir, '--lazy-pages', '--ps-socket', '3', '--status-fd', '4',
    '--leave-stopped', '-o', 'dump.log'], { stdio: ['ignore', 'ignore', 'pipe', theirs, 'pipe'] });
  fs.closeSync(theirs);
  let open = true;
  const closeMine = () => { if (open) { open = false; fs.closeSync(mine); } };
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => { closeMine(); resolve(code); }));
  const log = () => { try { return fs.readFileSync(path.join(dir, 'dump.log'), 'utf8').slice(-3000); } catch { return '(no log)'; } };
  const d: LazyDump = {
    readyMs: 0,
    ready: new Promise<void>((resolve, reject) => {
      (child.stdio[4] as NodeJS.ReadableStream).once('data', () => { d.readyMs = performance.now() - t0; resolve(); });
      void exit.then((code) => reject(new Error(`criu dump exited ${code} before its images were ready:\n${log()}`)));
    }),
    commit: () => { closeMine(); return exit; },
    rollback: () => { if (child.exitCode === null && child.pid) signal(child.pid, 'SIGALRM'); return exit; },
    log,
  };
  d.ready.catch(() => { /* reported by whoever awaits it */ });
  return d;
}

async function restore(criu: string, dir: string): Promise<{ pid: number; ms: number }> {
  const pidfile = path.join(dir, `restored-${Date.now()}.pid`);
  const t = performance.now();
  // A wrong image set can make restore spin forever: always a timeout.
  const r = await runCmd([criu, 'restore', '-D', dir, '-d', '--pidfile', pidfile, '-o', 'restore.log'], { timeoutMs: 60_000 });
  const ms = performance.now() - t;
  const log = () => { try { return fs.readFileSync(path.join(dir, 'restore.log'), 'utf8').slice(-3000); } catch { return '(no log)'; } };
  assert.equal(r.code, 0, `criu restore ${r.code === null ? 'timed out' : `exited ${r.code}`}:\n${log()}`);
  return { pid: Number(fs.readFileSync(pidfile, 'utf8')), ms };
}

// ---- the composer on hand-made images (no CRIU, no root)

/** A CRIU-like lazy image set: pid 1, pages id 3, two present entries with data 0xc1.., two lazy ones; a shmem pagemap. */
function fakeLazyImages(dir: string, entries = [
  { vaddr: 0x10000, nrPages: 2, flags: PE_PRESENT, inParent: false },
  { vaddr: 0x20000, nrPages: 4, flags: PE_LAZY, inParent: false },
  { vaddr: 0x30000, nrPages: 1, flags: PE_PRESENT, inParent: false },
  { vaddr: 0x40000, nrPages: 2, flags: PE_LAZY, inParent: false },
]): void {
  fs.mkdirSync(dir, { recursive: true });
  writePagemapImage(path.join(dir, 'pagemap-1.img'), { pagesId: 3, entries });
  const present = entries.filter((e) => e.flags & PE_PRESENT).reduce((n, e) => n + e.nrPages, 0);
  fs.writeFileSync(path.join(dir, 'pages-3.img'), Buffer.concat(Array.from({ length: present }, (_, i) => Buffer.alloc(P, 0xc1 + i))));
  fs.writeFileSync(path.join(dir, 'pagemap-shmem-5.img'), Buffer.from('not ours'));
}

async function fakeStore(): Promise<PageStore> {
  const s = new PageStore(path.join(tmp('fstore'), 's'));
  s.setLayout(100, [{ vaddr: 0x20000, nrPages: 8 }, { vaddr: 0x40000, nrPages: 2 }]);
  const pages = [0x20000, 0x21000, 0x22000, 0x23000, 0x40000, 0x41000];
  await s.write({ pid: 100, round: 0, ranges: pages.map((v) => ({ vaddr: v, nrPages: 1 })), data: Buffer.concat(pages.map((_, i) => Buffer.alloc(P, 0x51 + i))) });
  return s;
}

test('composer on hand-made images: chain into outDir, flat in place, shmem and CRIU data untouched', async () => {
  const src = tmp('fake');
  const out = path.join(tmp('out'), 'img');
  const flatDir = tmp('fakeflat');
  const store = await fakeStore();
  try {
    fakeLazyImages(src);
    fakeLazyImages(flatDir);
    const orig = fs.readFileSync(path.join(src, 'pagemap-1.img'));
    const st = await composeImages({ criuDir: src, outDir: out, store, imageIds: new Map([[1, 100]]) });
    assert.deepEqual({ ...st, ms: 0 }, { mode: 'chain', images: 1, entries: 4, presentPages: 3, storePages: 6, bytesCopied: 0, levels: 1, zeroPages: 0, chainTop: store.levelDir(0), ms: 0 });
    assert.deepEqual(fs.readFileSync(path.join(src, 'pagemap-1.img')), orig, 'criuDir untouched');
    assert.equal(fs.readFileSync(path.join(out, 'pagemap-shmem-5.img'), 'utf8'), 'not ours');
    assert.equal(path.resolve(out, fs.readlinkSync(path.join(out, 'parent'))), store.levelDir(0));
    const child = readPagemapImage(path.join(out, 'pagemap-1.img'));
    assert.deepEqual(child, { pagesId: 3, entries: [
      { vaddr: 0x10000, nrPages: 2, flags: PE_PRESENT, inParent: false },
      { vaddr: 0x20000, nrPages: 4, flags: PE_PARENT | PE_LAZY, inParent: true },
      { vaddr: 0x30000, nrPages: 1, flags: PE_PRESENT, inParent: false },
      { vaddr: 0x40000, nrPages: 2, flags: PE_PARENT | PE_LAZY, inParent: true },
    ] });
    assert.equal(fs.statSync(path.join(out, 'pages-3.img')).size, 3 * P, 'CRIU pages file as it was');
    const parent = readPagemapImage(path.join(store.levelDir(0), 'pagemap-1.img'));
    assert.deepEqual(parent.entries, [
      { vaddr: 0x20000, nrPages: 8, flags: PE_PRESENT, inParent: false },
      { vaddr: 0x40000, nrPages: 2, flags: PE_PRESENT, inParent: false },
    ]);
    assert.equal(fs.statSync(path.join(store.levelDir(0), `pages-${parent.pagesId}.img`)).size, 10 * P);

    const fl = await composeImages({ criuDir: flatDir, store, imageIds: { 1: 100 }, mode: 'flat' });
    assert.equal(fl.bytesCopied, 9 * P);
    const flatMap = readPagemapImage(path.join(flatDir, 'pagemap-1.img'));
    assert.deepEqual(flatMap.entries.map((e) => [e.flags, e.inParent]), [[PE_PRESENT, false], [PE_PRESENT | PE_LAZY, false], [PE_PRESENT, false], [PE_PRESENT | PE_LAZY, false]]);
    const data = fs.readFileSync(path.join(flatDir, 'pages-3.img'));
    assert.deepEqual(Array.from({ length: 9 }, (_, i) => data[i * P + 17]), [0xc1, 0xc2, 0x51, 0x52, 0x53, 0x54, 0xc3, 0x55, 0x56]);
    assert.ok(!fs.existsSync(path.join(flatDir, 'parent')));
  } finally {
    await store.destroy();
    for (const d of [src, path.dirname(out), flatDir, path.dirname(store.dir)]) fs.rmSync(d, { recursive: true, force: true });
  }
});

test('lazy pages whose newest copy is all zeros get no entry (chain and lazy modes): nothing populates them', async () => {
  const chainDir = tmp('zchain');
  const lazyDir = tmp('zlazy');
  const store = await fakeStore();
  try {
    // Newest copies: 0x21000 and 0x22000 zero (round 1), 0x41000 zero then data again (rounds 1, 2).
    await store.write({ pid: 100, round: 1, ranges: [{ vaddr: 0x21000, nrPages: 2, zero: true }, { vaddr: 0x41000, nrPages: 1, zero: true }], data: Buffer.alloc(0) });
    await store.write({ pid: 100, round: 2, ranges: [{ vaddr: 0x41000, nrPages: 1 }], data: Buffer.alloc(P, 0x77) });
    assert.deepEqual(store.dataRuns(100, 0x20, 4), [{ page: 0x20, n: 1 }, { page: 0x23, n: 1 }]);
    assert.deepEqual(store.dataRuns(100, 0x40, 2), [{ page: 0x40, n: 2 }]);
    fakeLazyImages(chainDir);
    fakeLazyImages(lazyDir);
    const ch = await composeImages({ criuDir: chainDir, store, imageIds: { 1: 100 } });
    assert.equal(ch.zeroPages, 2);
    assert.deepEqual(readPagemapImage(path.join(chainDir, 'pagemap-1.img')).entries, [
      { vaddr: 0x10000, nrPages: 2, flags: PE_PRESENT, inParent: false },
      { vaddr: 0x20000, nrPages: 1, flags: PE_PARENT | PE_LAZY, inParent: true },
      { vaddr: 0x23000, nrPages: 1, flags: PE_PARENT | PE_LAZY, inParent: true },
      { vaddr: 0x30000, nrPages: 1, flags: PE_PRESENT, inParent: false },
      { vaddr: 0x40000, nrPages: 2, flags: PE_PARENT | PE_LAZY, inParent: true },
    ]);
    const lz = await composeImages({ criuDir: lazyDir, store, imageIds: { 1: 100 }, mode: 'lazy' });
    assert.equal(lz.zeroPages, 2);
    assert.ok(!fs.existsSync(path.join(lazyDir, 'parent')), 'no parent: the lazy restore asks the store');
    assert.deepEqual(readPagemapImage(path.join(lazyDir, 'pagemap-1.img')).entries, [
      { vaddr: 0x10000, nrPages: 2, flags: PE_PRESENT, inParent: false },
      { vaddr: 0x20000, nrPages: 1, flags: PE_LAZY, inParent: false },
      { vaddr: 0x23000, nrPages: 1, flags: PE_LAZY, inParent: false },
      { vaddr: 0x30000, nrPages: 1, flags: PE_PRESENT, inParent: false },
      { vaddr: 0x40000, nrPages: 2, flags: PE_LAZY, inParent: false },
    ]);
    assert.equal(fs.statSync(path.join(lazyDir, 'pages-3.img')).size, 3 * P, 'CRIU pages file as it was');
  } finally {
    await store.destroy();
    for (const d of [chainDir, lazyDir, path.dirname(store.dir)]) fs.rmSync(d, { recursive: true, force: true });
  }
});

test('composer refuses images it cannot trust, before changing anything', async () => {
  const store = await fakeStore();
  const cases: Array<[string, (dir: string) => void, RegExp]> = [
    ['short pages file', (d) => fs.truncateSync(path.join(d, 'pages-3.img'), 2 * P), /pages-3\.img has 8192 bytes, pagemap-1\.img lists 3 present pages/],
    ['parent entry', (d) => fakeLazyImages(d, [{ vaddr: 0x20000, nrPages: 1, flags: PE_PARENT, inParent: true }]), /parent entry at 0x20000/],
    ['unaligned entry', (d) => {
      fakeLazyImages(d, [{ vaddr: 0x20000, nrPages: 1, flags: PE_LAZY, inParent: false }]);
      // Our encoder refuses unaligned addresses: patch the varint (80 80 08 -> 88 80 08 = 0x20008).
      const f = path.join(d, 'pagemap-1.img');
      const b = fs.readFileSync(f);
      assert.deepEqual([...b.subarray(18, 22)], [0x08, 0x80, 0x80, 0x08]);
      b[19] = 0x88;
      fs.writeFileSync(f, b);
    }, /0x20008 .*unaligned/],
    ['out of order', (d) => fakeLazyImages(d, [{ vaddr: 0x40000, nrPages: 1, flags: PE_LAZY, inParent: false }, { vaddr: 0x20000, nrPages: 1, flags: PE_LAZY, inParent: false }]), /out of order/],
    ['lazy page never received', (d) => fakeLazyImages(d, [{ vaddr: 0x20000, nrPages: 5, flags: PE_LAZY, inParent: false }]), /page 0x24000 of pid 1 \(store pid 100\) as lazy, but the page store does not hold it/],
    ['lazy page outside the layout', (d) => fakeLazyImages(d, [{ vaddr: 0x90000, nrPages: 1, flags: PE_LAZY, inParent: false }]), /page 0x90000 .*does not hold it/],
    ['garbage pagemap', (d) => fs.writeFileSync(path.join(d, 'pagemap-1.img'), 'garbage!'), /bad magic/],
  ];
  try {
    for (const [what, spoil, re] of cases) {
      const dir = tmp('bad');
      try {
        fakeLazyImages(dir);
        spoil(dir);
        const before = fs.readFileSync(path.join(dir, 'pagemap-1.img'));
        await assert.rejects(composeImages({ criuDir: dir, store, imageIds: { 1: 100 } }), (e: unknown) => {
          assert.ok(e instanceof PhaulError, what);
          assert.match(e.message, re, what);
          assert.ok(!e.message.includes('\n'), what);
          return true;
        }, what);
        assert.deepEqual(fs.readFileSync(path.join(dir, 'pagemap-1.img')), before, `${what}: pagemap untouched`);
        assert.ok(!fs.existsSync(path.join(dir, 'parent')), what);
        store.thaw();
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    }
  } finally {
    await store.destroy();
    fs.rmSync(path.dirname(store.dir), { recursive: true, force: true });
  }
});

const criu = criuFound ?? '';
const skip = process.getuid?.() !== 0 ? 'needs root' : noCriu || false;

test('chain composition: a 256 MiB workload that kept writing restores intact from a two-level store', { skip, timeout: 180_000 }, async () => {
  const w = await startMemWorkload({ mib: 256, writeMBps: 100, threads: 2 });
  const store = new PageStore(path.join(tmp('store'), 's'));
  const img = tmp('img');
  let dump: LazyDump | null = null;
  try {
    const vmas = lazyVmas(w.pid);
    const big = vmas.reduce((a, b) => (b.end - b.start > a.end - a.start ? b : a));
    // Round 0 announces only the big buffer: the other VMAs are announced at
    // the final round, as new mmaps would be, and land in a second level.
    store.setLayout(w.pid, [{ vaddr: big.start, nrPages: (big.end - big.start) / P }]);
    const r0 = await sendRound(store, w.pid, 0, presentRuns(w.pid, big));
    assert.ok(r0.sent >= 256 * 256, `round 0 sent ${r0.sent} pages`);
    await sleep(300);

    dump = startLazyDump(criu, w.pid, img);
    await dump.ready;
    // Frozen by CRIU now: the final round.
    const now = lazyVmas(w.pid);
    assert.equal(store.setLayout(w.pid, now.map((v) => ({ vaddr: v.start, nrPages: (v.end - v.start) / P }))).level, 1);
    const fin = await sendRound(store, w.pid, 1, runsOf(w.pid, now), { onlyChanged: true });
    assert.ok(fin.sent > 1000 && fin.sent < fin.pages / 2, `final round: ${fin.sent} of ${fin.pages} pages changed`);

    const before = readPagemapImage(path.join(img, 'pagemap-1.img'));
    assert.ok(before.entries.some((e) => e.flags === PE_LAZY), 'CRIU wrote lazy entries');
    const st = await composeImages({ criuDir: img, store, imageIds: { 1: w.pid } });
    console.log(`# 256 MiB: round 0 ${r0.sent} pages, final ${fin.sent} pages (store ${fin.storeMs.toFixed(1)} ms); ` +
      `dump ready ${dump.readyMs.toFixed(0)} ms; compose ${st.ms.toFixed(2)} ms ${JSON.stringify({ ...st, ms: undefined })}`);
    assert.equal(st.mode, 'chain');
    assert.equal(st.levels, 2);
    assert.equal(st.bytesCopied, 0);
    assert.ok(st.storePages >= 256 * 256, `store pages ${st.storePages}`);
    assert.equal(path.resolve(img, fs.readlinkSync(path.join(img, 'parent'))), store.levelDir(1));
    const after = readPagemapImage(path.join(img, 'pagemap-1.img'));
    assert.equal(after.pagesId, before.pagesId);
    assert.deepEqual(after.entries.map((e) => [e.vaddr, e.nrPages]), before.entries.map((e) => [e.vaddr, e.nrPages]), 'same ranges, same order');
    for (const e of after.entries) assert.ok(e.flags === (PE_PARENT | PE_LAZY) ? e.inParent : (e.flags & PE_PRESENT) && !e.inParent, `entry flags ${e.flags}`);

    const r = await restore(criu, img);
    w.adopt(r.pid);
    assert.equal(await dump.commit(), 0, dump.log());
    dump = null;
    const rep = await w.report(r.pid);
    assert.equal(rep.badPages, 0, JSON.stringify(rep));
    assert.ok(rep.ok);
    assert.equal(rep.pages, 256 * 256);
    assert.ok(procState(w.pid) !== null, '--leave-stopped keeps the original (we kill it)');
  } finally {
    if (dump) await dump.rollback();
    await w.stop();
    await store.destroy();
    fs.rmSync(path.dirname(store.dir), { recursive: true, force: true });
    fs.rmSync(img, { recursive: true, force: true });
  }
});

test('a lazy page the store lacks fails composition clearly, leaves the images alone, and the rollback resumes the workload', { skip, timeout: 120_000 }, async () => {
  const w = await startMemWorkload({ mib: 64, writeMBps: 20 });
  const store = new PageStore(path.join(tmp('store'), 's'));
  const img = tmp('img');
  let dump: LazyDump | null = null;
  try {
    const vmas = lazyVmas(w.pid);
    const big = vmas.reduce((a, b) => (b.end - b.start > a.end - a.start ? b : a));
    const lost = big.start / P + 777;
    store.setLayout(w.pid, vmas.map((v) => ({ vaddr: v.start, nrPages: (v.end - v.start) / P })));
    await sendRound(store, w.pid, 0, runsOf(w.pid, vmas), { skip: new Set([lost]) });
    dump = startLazyDump(criu, w.pid, img);
    await dump.ready;
    await sendRound(store, w.pid, 1, runsOf(w.pid, vmas), { onlyChanged: true, skip: new Set([lost]) });
    const pagemap = fs.readFileSync(path.join(img, 'pagemap-1.img'));
    await assert.rejects(composeImages({ criuDir: img, store, imageIds: { 1: w.pid } }), (e: unknown) => {
      assert.ok(e instanceof PhaulError);
      assert.match(e.message, new RegExp(`page 0x${(lost * P).toString(16)} of pid 1 .*does not hold it`));
      assert.ok(!e.message.includes('\n'));
      return true;
    });
    assert.deepEqual(fs.readFileSync(path.join(img, 'pagemap-1.img')), pagemap, 'pagemap untouched');
    assert.ok(!fs.existsSync(path.join(img, 'parent')));

    // Rollback: criu exits 1 and the workload goes on, intact.
    assert.equal(await dump.rollback(), 1, dump.log());
    dump = null;
    const rep = await w.report();
    assert.ok(rep.ok, JSON.stringify(rep));
    assert.ok(isAlive(w.pid));
  } finally {
    if (dump) await dump.rollback();
    await w.stop();
    await store.destroy();
    fs.rmSync(path.dirname(store.dir), { recursive: true, force: true });
    fs.rmSync(img, { recursive: true, force: true });
  }
});

test('1 GiB, ~2% dirty: chain vs flat compose and restore times (printed), both verified', { skip, timeout: 300_000 }, async () => {
  const w = await startMemWorkload({ mib: 1024, writeMBps: 20 });
  const store = new PageStore(path.join(tmp('store'), 's'));
  const img = tmp('img');
  const flat = tmp('flat');
  let dump: LazyDump | null = null;
  const restored: number[] = [];
  try {
    const vmas = lazyVmas(w.pid);
    store.setLayout(w.pid, vmas.map((v) => ({ vaddr: v.start, nrPages: (v.end - v.start) / P })));
    const t = performance.now();
    const r0 = await sendRound(store, w.pid, 0, runsOf(w.pid, vmas));
    const r0ms = performance.now() - t;
    // ~2% dirty: 262144 pages x 2% = 5243 pages = 21.5 MB; memwork writes
    // 20 MB/s of distinct pages, during round 0's read and this pause.
    await sleep(600);

    dump = startLazyDump(criu, w.pid, img);
    await dump.ready;
    const readyMs = dump.readyMs;
    const fin = await sendRound(store, w.pid, 1, runsOf(w.pid, lazyVmas(w.pid)), { onlyChanged: true });
    fs.cpSync(img, flat, { recursive: true });

    const chain = await composeImages({ criuDir: img, store, imageIds: { 1: w.pid } });
    const flatSt = await composeImages({ criuDir: flat, store, imageIds: { 1: w.pid }, mode: 'flat' });
    assert.equal(flatSt.bytesCopied, fs.statSync(path.join(flat, `pages-${readPagemapImage(path.join(flat, 'pagemap-1.img')).pagesId}.img`)).size);

    // Restore chain, flat, chain: on this VM the first touch of guest memory
    // not used recently costs several times more (the host backs it then), so
    // the first restore of a run pays extra whatever its images are.
    const restoreAndVerify = async (dir: string, what: string) => {
      fs.rmSync(w.reportPath, { force: true }); // each restore starts from the dump's report count
      const r = await restore(criu, dir);
      restored.push(r.pid);
      w.adopt(r.pid);
      const rep = await w.report(r.pid);
      assert.ok(rep.ok, `${what}: ${JSON.stringify(rep)}`);
      await killPids([r.pid], ['memwork']);
      return r.ms;
    };
    const chainMs1 = await restoreAndVerify(img, 'chain');
    const flatMs = await restoreAndVerify(flat, 'flat');
    const chainMs2 = await restoreAndVerify(img, 'chain again');
    assert.equal(await dump.commit(), 0, dump.log());
    dump = null;

    console.log(`# 1 GiB: round 0 ${r0.sent} pages in ${r0ms.toFixed(0)} ms (store.write ${r0.storeMs.toFixed(0)} ms, ` +
      `${((r0.sent * P) / 1e6 / r0.storeMs).toFixed(2)} GB/s absorbed); dirty ${fin.sent} pages ` +
      `(${((100 * fin.sent) / fin.pages).toFixed(2)}%), stored in ${fin.storeMs.toFixed(1)} ms; dump ready ${readyMs.toFixed(0)} ms` +
      `\n# compose chain ${chain.ms.toFixed(2)} ms (${chain.entries} entries, ${chain.storePages} store pages by reference), ` +
      `flat ${flatSt.ms.toFixed(0)} ms (${(flatSt.bytesCopied / 1e6).toFixed(0)} MB copied)` +
      `\n# restore chain ${chainMs1.toFixed(0)} ms, flat ${flatMs.toFixed(0)} ms, chain again ${chainMs2.toFixed(0)} ms`);
    assert.ok(fin.sent > 1000 && fin.sent < 0.1 * fin.pages, `dirty ${fin.sent}`);
    // Compose time is printed above; speed claims belong to bench/, not to assertions.
    assert.ok(chain.storePages > 0 && flatSt.bytesCopied > 0);
  } finally {
    if (dump) await dump.rollback();
    await w.stop(...restored);
    await store.destroy();
    fs.rmSync(path.dirname(store.dir), { recursive: true, force: true });
    fs.rmSync(img, { recursive: true, force: true });
    fs.rmSync(flat, { recursive: true, force: true });
  }
});
