// The native page server (src/transport/page-server.ts, native/page_server.cc)
// against real CRIU and real processes, and against hostile input.
//
// 1. `criu dump --page-server` writes a self-checking workload (pagefill.c:
//    private memory with holes plus a shared anonymous mapping, so both a task
//    pagemap and a shmem pagemap arrive) into our server, over a socketpair
//    and over loopback TCP; `criu restore` takes the images and the restored
//    process verifies every page. The images are compared with those CRIU's
//    own `criu page-server` writes for the same memory.
// 2. Malformed or hostile peers get a rejected promise with a one-line
//    message, never a crash, a hang or a leaked descriptor.
// 3. PHAUL_PS_BENCH=1 adds the measurements: 1 GiB dump wall time through our
//    server vs `criu page-server`, and the close round trip.
import { after, before, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { PageServer, streamSocketPair, type PageServerStats } from '../src/transport/page-server';
import { PhaulError } from '../src/errors';
import { criuBinary } from '../src/criu/binary';
import { PACKAGE_ROOT } from '../src/package-root';
import { startInPidNamespace } from '../src/testing/workload';
import { killPids, runCmd, signal, sleep } from '../src/testing/proc';

const root = process.getuid?.() === 0;
const skip = root ? false : 'needs root (CRIU)';
const bench = process.env.PHAUL_PS_BENCH === '1' ? false : 'set PHAUL_PS_BENCH=1 to measure';
const PAGE = 4096;

let criu: string;
let headerSize: 24 | 32;
let criuVersion: string;
let pagefill: string;
let tmp: string;
let fdsAtStart: number;

const openFds = () => fs.readdirSync('/proc/self/fd').length;

before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'phaul-ps-test-'));
  fdsAtStart = openFds();
  if (!root) return;
  criu = criuBinary();
  const v = await runCmd([criu, '--version'], { timeoutMs: 10_000 });
  const m = /Version:\s*(\d+)\.(\d+)(?:\.(\d+))?/.exec(v.stdout);
  assert.ok(m, `criu --version: ${v.stdout}`);
  criuVersion = `${m[1]}.${m[2]}.${m[3] ?? 0}`;
  headerSize = Number(m[1]) > 4 || (Number(m[1]) === 4 && Number(m[2]) >= 2) ? 32 : 24;
  pagefill = await ensurePagefill();
});

after(() => {
  if (process.env.PHAUL_PS_KEEP === '1') console.log(`# kept ${tmp}`);
  else fs.rmSync(tmp, { recursive: true, force: true });
});

// ------------------------------------------------------------------ helpers

/** build/workloads/pagefill, compiled here when missing or stale (node-gyp rebuild wipes build/). */
async function ensurePagefill(): Promise<string> {
  const src = path.join(PACKAGE_ROOT, 'test', 'workloads', 'pagefill.c');
  const bin = path.join(PACKAGE_ROOT, 'build', 'workloads', 'pagefill');
  const mtime = (p: string) => { try { return fs.statSync(p).mtimeMs; } catch { return -1; } };
  if (mtime(bin) >= mtime(src)) return bin;
  fs.mkdirSync(path.dirname(bin), { recursive: true });
  const t = `${bin}.${process.pid}.tmp`;
  const r = await runCmd(['gcc', '-O2', '-Wall', '-o', t, src], { timeoutMs: 60_000 });
  assert.equal(r.code, 0, r.stderr);
  fs.renameSync(t, bin);
  return bin;
}

function mkdir(name: string): string {
  const d = path.join(tmp, name);
  fs.rmSync(d, { recursive: true, force: true });
  fs.mkdirSync(d, { recursive: true });
  return d;
}

/** pagefill in its own pid namespace; pids we started, for cleanup. */
class Workload {
  pids: number[] = [];
  constructor(readonly result: string, readonly mib: number) {}

  static async start(mib: number, dir: string): Promise<Workload> {
    const w = new Workload(path.join(dir, 'result'), mib);
    const ns = startInPidNamespace([pagefill, String(mib), w.result], { stderr: 'ignore' });
    w.pids.push(ns.child.pid ?? -1);
    const end = Date.now() + 20_000 + mib * 20;
    for (;;) {
      const init = ns.initPid();
      if (init > 0 && !w.pids.includes(init)) w.pids.push(init);
      if (init > 0 && w.read().startsWith('READY')) {
        w.init = init;
        return w;
      }
      if (ns.exited !== null || Date.now() > end) {
        await w.stop();
        throw new Error(`pagefill did not start: ${ns.exited ?? 'timeout'}`);
      }
      await sleep(10);
    }
  }
  init = -1;

  read(): string {
    try { return fs.readFileSync(this.result, 'utf8').trim(); } catch { return ''; }
  }

  /** SIGUSR1 to pid (e.g. the restored copy); its verdict line. */
  async verify(pid: number): Promise<string> {
    fs.rmSync(this.result, { force: true });
    assert.ok(signal(pid, 'SIGUSR1'), `process ${pid} is gone`);
    const end = Date.now() + 30_000 + this.mib * 10;
    for (;;) {
      const r = this.read();
      if (r) return r;
      if (Date.now() > end) return 'TIMEOUT';
      await sleep(10);
    }
  }

  async stop(): Promise<void> {
    await killPids(this.pids, ['pagefill', 'unshare']);
  }
}

interface CriuRun { code: number | null; wallMs: number; stderr: string }

/** Runs criu with `fd` as its fd 3 (for --ps-socket 3); SIGKILLed after timeoutMs. */
function runCriuWithFd(args: string[], fd: number | null, timeoutMs: number): Promise<CriuRun> {
  const t0 = performance.now();
  const stdio: Array<'ignore' | 'pipe' | number> = ['ignore', 'ignore', 'pipe'];
  if (fd !== null) stdio.push(fd);
  const child = spawn(criu, args, { stdio });
  let stderr = '';
  child.stderr!.on('data', (d) => { stderr += d; });
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, wallMs: performance.now() - t0, stderr });
    });
  });
}

function logTail(file: string, n = 6): string {
  try { return fs.readFileSync(file, 'utf8').trim().split('\n').slice(-n).join('\n'); } catch { return '(no log)'; }
}

/** Copies the images criu wrote locally (everything but memory) next to ours. */
function copyImages(from: string, to: string): void {
  for (const f of fs.readdirSync(from)) {
    if (!f.endsWith('.img')) continue;
    assert.ok(!/^(pagemap|pages)-/.test(f), `criu wrote ${f} locally although it had a page server`);
    fs.copyFileSync(path.join(from, f), path.join(to, f), fs.constants.COPYFILE_EXCL);
  }
}

/** criu restore -d under a timeout (a restore from short pages files spins forever); the restored pid. */
async function restore(dir: string, w: Workload): Promise<number> {
  const pidfile = path.join(dir, 'restore.pid');
  const r = await runCmd([criu, 'restore', '-D', dir, '-d', '--pidfile', pidfile, '-o', 'restore.log'], { timeoutMs: 60_000 });
  const pid = Number(fs.existsSync(pidfile) ? fs.readFileSync(pidfile, 'utf8').trim() : -1);
  if (pid > 0) w.pids.push(pid);
  assert.equal(r.code, 0, `criu restore: ${logTail(path.join(dir, 'restore.log'))}`);
  assert.ok(pid > 0);
  return pid;
}

interface PagemapEntry { vaddr: bigint; nr: number; flags: number | undefined; f2: number | undefined; f5: number | undefined }
interface Pagemap { magics: [number, number]; pagesId: number; entries: PagemapEntry[] }

/** Decodes a pagemap image by hand (independent of the writer under test). */
function readPagemap(file: string): Pagemap {
  const b = fs.readFileSync(file);
  let off = 8;
  const records: Buffer[] = [];
  while (off < b.length) {
    const n = b.readUInt32LE(off);
    records.push(b.subarray(off + 4, off + 4 + n));
    off += 4 + n;
  }
  assert.equal(off, b.length, `${file}: trailing bytes`);
  const fields = (r: Buffer) => {
    const out = new Map<number, bigint>();
    let i = 0;
    const varint = () => {
      let v = 0n;
      let s = 0n;
      for (;;) {
        const c = r[i++];
        v |= BigInt(c & 0x7f) << s;
        s += 7n;
        if (!(c & 0x80)) return v;
      }
    };
    while (i < r.length) {
      const key = Number(varint());
      assert.equal(key & 7, 0, 'only varint fields expected');
      out.set(key >> 3, varint());
    }
    return out;
  };
  const num = (v: bigint | undefined) => (v === undefined ? undefined : Number(v));
  const head = fields(records[0]);
  return {
    magics: [b.readUInt32LE(0), b.readUInt32LE(4)],
    pagesId: Number(head.get(1)),
    entries: records.slice(1).map((r) => {
      const f = fields(r);
      return { vaddr: f.get(1)!, nr: Number(f.get(5) ?? f.get(2)), flags: num(f.get(4)), f2: num(f.get(2)), f5: num(f.get(5)) };
    }),
  };
}

/** Checks that `ours` holds the same pagemaps and pages as `theirs` (CRIU's page server). */
function compareImages(ours: string, theirs: string): string[] {
  const list = (d: string) => fs.readdirSync(d).filter((f) => /^(pagemap|pages)-.*\.img$/.test(f)).sort();
  assert.deepEqual(list(ours), list(theirs), 'same image files');
  const notes: string[] = [];
  for (const f of list(ours)) {
    const a = path.join(ours, f);
    const b = path.join(theirs, f);
    if (f.startsWith('pagemap-')) {
      const pa = readPagemap(a);
      const pb = readPagemap(b);
      assert.deepEqual(pa.magics, pb.magics, `${f}: magics`);
      assert.equal(pa.pagesId, pb.pagesId, `${f}: pages_id`);
      const strip = (p: Pagemap) => p.entries.map((e) => ({ vaddr: e.vaddr, nr: e.nr, flags: e.flags }));
      assert.deepEqual(strip(pa), strip(pb), `${f}: entries`);
      if (fs.readFileSync(a).equals(fs.readFileSync(b))) notes.push(`${f}: byte-identical`);
      else notes.push(`${f}: same entries (field 2 = nr_pages here, CRIU ${criuVersion} writes ${pb.entries[0]?.f2})`);
    } else {
      assert.equal(fs.statSync(a).size, fs.statSync(b).size, `${f}: size`);
      // The two dumps are moments apart and the process is not quite still:
      // the kernel rewrites its rseq area (cpu_id) whenever it runs, and the
      // first dump ran a parasite in it. Allow a handful of such pages.
      const da = fs.readFileSync(a);
      const db = fs.readFileSync(b);
      let differ = 0;
      for (let o = 0; o < da.length; o += PAGE) if (!da.subarray(o, o + PAGE).equals(db.subarray(o, o + PAGE))) differ++;
      assert.ok(differ <= 4, `${f}: ${differ} pages differ`);
      notes.push(differ ? `${f}: ${differ} of ${da.length / PAGE} pages differ (live process)` : `${f}: byte-identical`);
    }
  }
  return notes;
}

/** Dumps w into a fresh page server of ours on one end of a socketpair; returns dirs and stats. */
async function dumpIntoOurs(w: Workload, name: string, extra: string[] = []) {
  const src = mkdir(`${name}-src`);
  const dst = mkdir(`${name}-dst`);
  const [mine, theirs] = streamSocketPair();
  const ps = PageServer.start(mine, dst, { headerSize });
  const run = runCriuWithFd(['dump', '-t', String(w.init), '-D', src, '--page-server', '--ps-socket', '3',
    '-o', 'dump.log', ...extra], theirs, 120_000);
  fs.closeSync(theirs); // criu has its own copy now
  const r = await run;
  if (r.code !== 0) ps.abort('criu dump failed');
  const stats = await ps.done.catch((e) => e as Error);
  assert.equal(r.code, 0, `criu dump: ${logTail(path.join(src, 'dump.log'))}`);
  assert.ok(!(stats instanceof Error), String(stats));
  return { src, dst, stats: stats as PageServerStats, wallMs: r.wallMs };
}

// ------------------------------------------------------------------ real CRIU

test('criu dump writes into our page server over a socketpair; images match criu page-server; restore verifies', { skip, timeout: 180_000 }, async () => {
  const w = await Workload.start(64, mkdir('wl1'));
  try {
    // CRIU's own page server first (--leave-running), then ours, of the same idle memory.
    const crSrc = mkdir('criu-src');
    const crDst = mkdir('criu-dst');
    const [a, b] = streamSocketPair();
    const crPs = runCriuWithFd(['page-server', '-D', crDst, '--ps-socket', '3', '-o', 'ps.log'], a, 60_000);
    fs.closeSync(a);
    const crDump = await runCriuWithFd(['dump', '-t', String(w.init), '-D', crSrc, '--page-server', '--ps-socket', '3',
      '-o', 'dump.log', '--leave-running'], b, 60_000);
    fs.closeSync(b);
    assert.equal(crDump.code, 0, `criu dump: ${logTail(path.join(crSrc, 'dump.log'))}`);
    assert.equal((await crPs).code, 0, `criu page-server: ${logTail(path.join(crDst, 'ps.log'))}`);

    const { src, dst, stats } = await dumpIntoOurs(w, 'ours');
    // 64 MiB minus every 17th page, plus 4 MiB shared minus its holes, plus the program's own pages.
    const filled = Math.ceil((64 << 20) / PAGE * 16 / 17) + Math.ceil((4 << 20) / PAGE * 16 / 17);
    assert.ok(stats.pages >= filled && stats.pages < filled + 200, `pages ${stats.pages} vs ${filled} filled`);
    assert.equal(stats.bytes, stats.pages * PAGE);
    assert.ok(stats.images.some((f) => /^pagemap-shmem-\d+\.img$/.test(f)), 'a shmem pagemap arrived');
    assert.ok(stats.images.includes('pagemap-1.img'), 'the task pagemap (pid 1 in its namespace) arrived');
    for (const f of stats.images) assert.ok(fs.existsSync(path.join(dst, f)));

    const notes = compareImages(dst, crDst);
    console.log(`# vs criu page-server ${criuVersion}: ${notes.join('; ')}`);
    const pm = readPagemap(path.join(dst, 'pagemap-1.img'));
    assert.deepEqual(pm.magics, [0x54564319, 0x56084025]);
    for (const e of pm.entries) {
      assert.equal(e.f2, e.nr, 'field 2 carries nr_pages (what 4.1 reads)');
      if (headerSize === 32) assert.equal(e.f5, e.nr, 'field 5 carries nr_pages (what 4.2 reads)');
    }

    copyImages(src, dst);
    const pid = await restore(dst, w);
    assert.equal(await w.verify(pid), `OK ${(64 << 20) / PAGE + (4 << 20) / PAGE}`);
  } finally {
    await w.stop();
  }
});

test('criu dump over loopback TCP into a server taken from a net.Socket; restore verifies', { skip, timeout: 180_000 }, async () => {
  const w = await Workload.start(128, mkdir('wl2'));
  const src = mkdir('tcp-src');
  const dst = mkdir('tcp-dst');
  // pauseOnConnect: Node must not read page-server bytes before we take the descriptor.
  const server = net.createServer({ pauseOnConnect: true });
  try {
    let ps: PageServer | undefined;
    const accepted = new Promise<PageServer>((resolve) => server.once('connection', (s) => {
      ps = PageServer.fromSocket(s, dst, { headerSize, idleTimeoutMs: 60_000 });
      resolve(ps);
    }));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    const r = await runCriuWithFd(['dump', '-t', String(w.init), '-D', src, '--page-server', '--address', '127.0.0.1',
      '--port', String(port), '-o', 'dump.log'], null, 120_000);
    if (r.code !== 0) ps?.abort('criu dump failed');
    assert.equal(r.code, 0, `criu dump: ${logTail(path.join(src, 'dump.log'))}`);
    const stats = await (await accepted).done;
    assert.ok(stats.pages > (128 << 20) / PAGE * 16 / 17);
    copyImages(src, dst);
    const pid = await restore(dst, w);
    assert.equal(await w.verify(pid), `OK ${(128 << 20) / PAGE + (4 << 20) / PAGE}`);
  } finally {
    server.close();
    await w.stop();
  }
});

// ------------------------------------------------------------------ a scripted peer

const OP = { ADD: 1, HOLE: 2, OPEN: 3, OPEN2: 4, PARENT: 5, ADD_F: 6, GET: 7, CLOSE: 0x1023, FORCE_CLOSE: 0x1024 };
const PE = { PARENT: 1, LAZY: 2, PRESENT: 4 };

function hdr(size: 24 | 32, cmd: number, nr: number | bigint, vaddr: number | bigint, dst: number | bigint): Buffer {
  const b = Buffer.alloc(size);
  b.writeUInt32LE(cmd >>> 0, 0);
  if (size === 24) {
    b.writeUInt32LE(Number(nr) >>> 0, 4);
    b.writeBigUInt64LE(BigInt(vaddr), 8);
    b.writeBigUInt64LE(BigInt(dst), 16);
  } else {
    b.writeUInt32LE(0xdeadbeef, 4); // padding: CRIU does not zero it, so neither may we care
    b.writeBigUInt64LE(BigInt(nr), 8);
    b.writeBigUInt64LE(BigInt(vaddr), 16);
    b.writeBigUInt64LE(BigInt(dst), 24);
  }
  return b;
}
const pid = (id: number) => BigInt(id) << 8n | 1n;
const shm = (id: number) => BigInt(id) << 8n | 2n;
const addF = (size: 24 | 32, nr: number, vaddr: number | bigint, dst = pid(1), flags = PE.PRESENT) =>
  hdr(size, flags << 16 | OP.ADD_F, nr, vaddr, dst);

/** Pages with a recognisable content. */
function pages(n: number, tag: number): Buffer {
  const b = Buffer.alloc(n * PAGE);
  for (let i = 0; i < b.length; i += 4) b.writeUInt32LE((tag * 0x10000 + i) >>> 0, i);
  return b;
}

/** The peer side of a connection, on a Node socket. */
class Peer {
  private buf = Buffer.alloc(0);
  private waiters: Array<() => void> = [];
  ended = false;
  constructor(readonly sock: net.Socket) {
    sock.on('data', (d) => { this.buf = Buffer.concat([this.buf, d]); this.wake(); });
    sock.on('end', () => { this.ended = true; this.wake(); });
    sock.on('error', () => { this.ended = true; this.wake(); });
  }
  private wake() { for (const w of this.waiters.splice(0)) w(); }
  send(...b: Buffer[]): Promise<void> {
    return new Promise((resolve) => this.sock.write(Buffer.concat(b), () => resolve()));
  }
  async read(n: number, timeoutMs = 5_000): Promise<Buffer> {
    const end = Date.now() + timeoutMs;
    while (this.buf.length < n) {
      if (this.ended) throw new Error(`peer: connection ended after ${this.buf.length} of ${n} bytes`);
      const left = end - Date.now();
      if (left <= 0) throw new Error(`peer: no reply within ${timeoutMs} ms`);
      await new Promise<void>((r) => { this.waiters.push(r); setTimeout(r, left); });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
  end() { this.sock.end(); }
  destroy() { this.sock.destroy(); }
}

function unixSession(dir: string, opts: Partial<Parameters<typeof PageServer.start>[2]> = {}, size: 24 | 32 = 24) {
  const [mine, theirs] = streamSocketPair();
  const ps = PageServer.start(mine, dir, { headerSize: size, ...opts });
  return { ps, peer: new Peer(new net.Socket({ fd: theirs, readable: true, writable: true })) };
}

/** done must reject with this code and message within timeoutMs. */
async function expectReject(done: Promise<unknown>, code: string, msg: RegExp, timeoutMs = 5_000): Promise<string> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, rej) => { timer = setTimeout(() => rej(new Error(`no verdict within ${timeoutMs} ms`)), timeoutMs); });
  try {
    await Promise.race([done, timeout]);
  } catch (e) {
    if (!(e instanceof PhaulError)) throw e;
    assert.equal(e.code, code, e.message);
    assert.match(e.message, msg);
    assert.ok(!e.message.includes('\n'), 'one line');
    return e.message;
  } finally {
    clearTimeout(timer);
  }
  assert.fail('the page server accepted what it should have refused');
}

for (const size of [24, 32] as const) {
  test(`a scripted ${size}-byte-header session writes the images CRIU restore reads`, { timeout: 20_000 }, async () => {
    const dir = mkdir(`scripted-${size}`);
    const { ps, peer } = unixSession(dir, {}, size);
    try {
      await peer.send(hdr(size, OP.PARENT, 0, 0, pid(7)));
      assert.equal((await peer.read(4)).readInt32LE(0), 0, 'PARENT: no parent');
      await peer.send(hdr(size, OP.OPEN2, 0, 0, pid(7)));
      assert.equal((await peer.read(1))[0], 0, 'OPEN2: has_parent = 0');
      const base = 0x7f0000000000n;
      await peer.send(addF(size, 3, base, pid(7), PE.PRESENT | PE.LAZY), pages(3, 1));
      await peer.send(hdr(size, OP.ADD, 1, base + 0x10000n, pid(7)), pages(1, 2));
      // OPEN (no reply) of a shmem pagemap; its offsets start at 0.
      await peer.send(hdr(size, OP.OPEN, 0, 0, shm(99)), addF(size, 2, 0, shm(99)), pages(2, 3));
      await peer.send(hdr(size, OP.FORCE_CLOSE, 0, 0, 0));
      assert.equal((await peer.read(4)).readInt32LE(0), 0, 'CLOSE: status 0');
      const st = await ps.done;
      assert.deepEqual(st, { entries: 3, pages: 6, bytes: 6 * PAGE,
        images: ['pagemap-7.img', 'pages-65537.img', 'pagemap-shmem-99.img', 'pages-65538.img'] });
      const pm = readPagemap(path.join(dir, 'pagemap-7.img'));
      assert.deepEqual(pm.magics, [0x54564319, 0x56084025]);
      assert.equal(pm.pagesId, 0x10001);
      assert.deepEqual(pm.entries, [
        { vaddr: base, nr: 3, flags: 6, f2: 3, f5: size === 32 ? 3 : undefined },
        { vaddr: base + 0x10000n, nr: 1, flags: 4, f2: 1, f5: size === 32 ? 1 : undefined },
      ]);
      if (size === 24) {
        // Exactly protobuf-c's packing of pagemap_entry{vaddr, nr_pages, flags}.
        const raw = fs.readFileSync(path.join(dir, 'pagemap-7.img'));
        assert.equal(raw.subarray(8).toString('hex'), '04000000' + '08818004' +
          '0c000000' + '088080808080e01f' + '1003' + '2006' + '0c000000' + '088080848080e01f' + '1001' + '2004');
      }
      assert.ok(fs.readFileSync(path.join(dir, 'pages-65537.img')).equals(Buffer.concat([pages(3, 1), pages(1, 2)])));
      assert.ok(fs.readFileSync(path.join(dir, 'pages-65538.img')).equals(pages(2, 3)));
      assert.equal(readPagemap(path.join(dir, 'pagemap-shmem-99.img')).pagesId, 0x10002);
    } finally {
      peer.destroy();
    }
  });
}

// Each case: what the peer sends (24-byte headers), the expected code and message.
const OPEN_1 = hdr(24, OP.OPEN, 0, 0, pid(1));
const bad: Array<[string, Buffer[], string, RegExp]> = [
  ['an unknown op', [hdr(24, 9, 0, 0, 0)], 'protocol', /unknown op 0x9/],
  ['a lazy GET', [hdr(24, OP.GET, 1, 0, 1)], 'protocol', /GET .*not supported/],
  ['a huge nr_pages', [OPEN_1, addF(24, 0xffffffff, 0x1000)], 'protocol', /nr_pages 4294967295 outside 1\.\.1048576/],
  ['zero nr_pages', [OPEN_1, addF(24, 0, 0x1000)], 'protocol', /nr_pages 0 outside/],
  ['ADD before OPEN', [addF(24, 1, 0x1000)], 'protocol', /not open/],
  ['ADD for another pagemap', [OPEN_1, addF(24, 1, 0x1000, pid(2))], 'protocol', /not open/],
  ['a misaligned vaddr', [OPEN_1, addF(24, 1, 0x1234)], 'protocol', /not page aligned/],
  ['a range beyond user space', [OPEN_1, addF(24, 16, 0xfffffffffffff000n)], 'protocol', /beyond user space/],
  ['a HOLE (page in parent)', [OPEN_1, hdr(24, OP.HOLE, 1, 0x1000, pid(1))], 'protocol', /no parent/],
  ['PE_PARENT flags', [OPEN_1, addF(24, 1, 0x1000, pid(1), PE.PARENT)], 'protocol', /no parent/],
  ['a lazy entry without data', [OPEN_1, addF(24, 1, 0x1000, pid(1), PE.LAZY)], 'protocol', /without page data/],
  ['unknown flags', [OPEN_1, addF(24, 1, 0x1000, pid(1), 0x84)], 'protocol', /unknown flags/],
  ['flags on OPEN', [hdr(24, 4 << 16 | OP.OPEN, 0, 0, pid(1))], 'protocol', /only ADD_F carries flags/],
  ['an unknown pagemap type', [hdr(24, OP.OPEN2, 0, 0, 7n << 8n | 11n)], 'protocol', /unknown pagemap type 11/],
  ['pid 0', [hdr(24, OP.OPEN, 0, 0, 1n)], 'protocol', /pid 0 out of range/],
  ['a pid beyond PID_MAX', [hdr(24, OP.OPEN, 0, 0, pid(1 << 23))], 'protocol', /out of range/],
  ['entries out of order', [OPEN_1, addF(24, 1, 0x2000), pages(1, 0), addF(24, 1, 0x1000)], 'protocol', /overlaps or precedes/],
  ['overlapping entries', [OPEN_1, addF(24, 2, 0x2000), pages(2, 0), addF(24, 1, 0x3000)], 'protocol', /overlaps/],
  ['the same pagemap opened twice', [OPEN_1, hdr(24, OP.OPEN, 0, 0, pid(2)), OPEN_1], 'protocol', /opened twice/],
  ['EOF before CLOSE', [OPEN_1, addF(24, 1, 0x1000), pages(1, 0)], 'network', /closed before CLOSE \(1 entries, 1 pages/],
  ['EOF inside page data', [OPEN_1, addF(24, 4, 0x1000), pages(2, 0)], 'network', /closed inside ADD_F data \(8192 of 16384 bytes/],
  ['EOF inside a header', [OPEN_1, Buffer.alloc(10)], 'network', /inside a header \(10 of 24 bytes\)/],
  ['EOF at once', [], 'network', /closed before CLOSE/],
];

for (const [what, send, code, msg] of bad) {
  test(`refuses ${what}`, { timeout: 10_000 }, async () => {
    const { ps, peer } = unixSession(mkdir('bad'));
    try {
      await peer.send(...send);
      peer.end();
      await expectReject(ps.done, code, msg);
    } finally {
      peer.destroy();
    }
  });
}

test('refuses random bytes, for many seeds, without crashing or hanging', { timeout: 60_000 }, async () => {
  let seed = 12345;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 16) & 0xff;
  const seen = new Set<string>();
  for (let i = 0; i < 200; i++) {
    const size = i % 2 ? 24 : 32;
    const b = Buffer.alloc(16 + (i * 37) % 4096);
    for (let j = 0; j < b.length; j++) b[j] = rnd();
    if (i % 4 >= 2) {
      // Plausible headers with random fields, so the checks past op decoding get exercised too.
      const ops = [OP.ADD, OP.HOLE, OP.OPEN, OP.OPEN2, OP.PARENT, OP.ADD_F, OP.CLOSE];
      const first = hdr(size, OP.OPEN, 0, 0, pid(1 + rnd()));
      const h = hdr(size, (rnd() & 7) << 16 | ops[rnd() % ops.length], rnd() * rnd(), BigInt(rnd()) << BigInt(rnd() % 48),
        BigInt(rnd()) << 8n | BigInt(rnd() % 3));
      first.copy(b, 0);
      h.copy(b, size, 0, Math.min(size, b.length - size));
    }
    const { ps, peer } = unixSession(mkdir('random'), {}, size);
    try {
      await peer.send(b);
      peer.end();
      let err: unknown;
      try { await Promise.race([ps.done, sleep(5_000).then(() => { throw new Error('hang'); })]); } catch (e) { err = e; }
      if (err === undefined) { seen.add('accepted: a well-formed session'); continue; }
      assert.ok(err instanceof PhaulError, `seed ${i}: ${String(err)}`);
      assert.ok(['protocol', 'network', 'failed'].includes(err.code), err.message);
      assert.ok(!err.message.includes('\n'), 'one line');
      seen.add(err.message.replace(/0x[0-9a-f]+|\d+/g, 'N'));
    } finally {
      peer.destroy();
    }
  }
  console.log(`# random input: ${seen.size} distinct refusals: ${[...seen].join(' | ')}`);
});

test('a nr_pages beyond 32 bits in a 4.2 header is refused before any allocation or splice', { timeout: 10_000 }, async () => {
  const { ps, peer } = unixSession(mkdir('huge32'), {}, 32);
  try {
    await peer.send(hdr(32, OP.OPEN, 0, 0, pid(1)), addF(32, 2 ** 40, 0x1000));
    await expectReject(ps.done, 'protocol', /nr_pages 1099511627776 outside/);
  } finally {
    peer.destroy();
  }
});

test('refuses more page data than maxBytes, before splicing it', { timeout: 10_000 }, async () => {
  const { ps, peer } = unixSession(mkdir('maxbytes'), { maxBytes: 4 * PAGE });
  try {
    await peer.send(OPEN_1, addF(24, 3, 0x1000), pages(3, 0), addF(24, 2, 0x10000));
    await expectReject(ps.done, 'failed', /more than the 0 MiB this server may write \(1 entries, 3 pages received, next entry 2 pages\)/);
  } finally {
    peer.destroy();
  }
});

test('a full disk fails cleanly with ENOSPC', { skip, timeout: 20_000 }, async () => {
  const mnt = mkdir('small-fs');
  const m = await runCmd(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'phaul-ps-test', mnt], { timeoutMs: 10_000 });
  assert.equal(m.code, 0, m.stderr);
  const { ps, peer } = unixSession(mnt, { maxBytes: 1 << 30 }); // lie about the space: the write must fail
  try {
    const sent = peer.send(OPEN_1, addF(24, 512, 0x1000), pages(512, 0));
    await expectReject(ps.done, 'failed', /write pages for pagemap-1\.img: No space left on device/);
    peer.destroy();
    await sent.catch(() => undefined);
  } finally {
    peer.destroy();
    await runCmd(['umount', mnt], { timeoutMs: 10_000 });
  }
});

test('a write error at CLOSE is answered with status -1, not a false success', { skip, timeout: 20_000 }, async () => {
  const mnt = mkdir('small-fs3');
  const m = await runCmd(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'phaul-ps-test', mnt], { timeoutMs: 10_000 });
  assert.equal(m.code, 0, m.stderr);
  const { ps, peer } = unixSession(mnt);
  try {
    // The pages fill the file system exactly; the buffered pagemap has no room left at CLOSE.
    await peer.send(hdr(24, OP.OPEN2, 0, 0, pid(1)));
    await peer.read(1);
    await peer.send(addF(24, 256, 0x1000), pages(256, 0), hdr(24, OP.CLOSE, 0, 0, 0));
    assert.equal((await peer.read(4)).readInt32LE(0), -1, 'status -1');
    await expectReject(ps.done, 'failed', /write pagemap-1\.img: No space left on device/);
  } finally {
    peer.destroy();
    await runCmd(['umount', mnt], { timeoutMs: 10_000 });
  }
});

test('the default limit is the free space of the directory', { skip, timeout: 20_000 }, async () => {
  const mnt = mkdir('small-fs2');
  const m = await runCmd(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'phaul-ps-test', mnt], { timeoutMs: 10_000 });
  assert.equal(m.code, 0, m.stderr);
  const { ps, peer } = unixSession(mnt);
  try {
    await peer.send(OPEN_1, addF(24, 512, 0x1000));
    await expectReject(ps.done, 'failed', /more than the 1 MiB this server may write/);
  } finally {
    peer.destroy();
    await runCmd(['umount', mnt], { timeoutMs: 10_000 });
  }
});

test('abort() stops a waiting server at once and closes its socket', { timeout: 10_000 }, async () => {
  const { ps, peer } = unixSession(mkdir('abort'));
  try {
    await peer.send(OPEN_1, addF(24, 4, 0x1000), pages(1, 0)); // stuck inside the entry's data
    await sleep(50);
    const t0 = performance.now();
    ps.abort('rollback');
    await expectReject(ps.done, 'failed', /^page server: aborted: rollback$/, 1_000);
    const ms = performance.now() - t0;
    assert.ok(ms < 500, `took ${ms} ms`);
    await sleep(20);
    assert.ok(peer.ended, 'the peer sees its connection end');
    ps.abort('again'); // harmless once finished
  } finally {
    peer.destroy();
  }
});

test('idleTimeoutMs fails a silent peer', { timeout: 10_000 }, async () => {
  const { ps, peer } = unixSession(mkdir('idle'), { idleTimeoutMs: 200 });
  try {
    await peer.send(OPEN_1);
    await expectReject(ps.done, 'network', /no data from the peer for 200 ms/, 3_000);
  } finally {
    peer.destroy();
  }
});

test('a missing directory and bad arguments are reported, not crashed on', { timeout: 10_000 }, async () => {
  const { ps, peer } = unixSession(path.join(tmp, 'does-not-exist'));
  await expectReject(ps.done, 'failed', /open .*does-not-exist: No such file or directory/);
  peer.destroy();
  // Not a socket: refused synchronously and left open (ownership never passed).
  const fd = fs.openSync('/dev/null', 'r');
  try {
    assert.throws(() => PageServer.start(fd, tmp, { headerSize: 24 }), /not a stream socket/);
    fs.fstatSync(fd); // still open
  } finally {
    fs.closeSync(fd);
  }
  const [a, b] = streamSocketPair();
  assert.throws(() => PageServer.start(a, tmp, { headerSize: 40 as 24 }), /headerSize must be 24/);
  assert.throws(() => fs.fstatSync(a), /EBADF/, 'taken and closed even on bad options');
  fs.closeSync(b);
});

test('a planted symlink in the image directory is not followed', { timeout: 10_000 }, async () => {
  const dir = mkdir('symlink');
  const victim = path.join(tmp, 'victim');
  fs.writeFileSync(victim, 'keep');
  fs.symlinkSync(victim, path.join(dir, 'pagemap-1.img'));
  const { ps, peer } = unixSession(dir);
  try {
    await peer.send(hdr(24, OP.OPEN2, 0, 0, pid(1)));
    await expectReject(ps.done, 'failed', /create pagemap-1\.img: Too many levels of symbolic links/);
    assert.equal(fs.readFileSync(victim, 'utf8'), 'keep');
  } finally {
    peer.destroy();
  }
});

test('CLOSE is answered at once over TCP (no cork, no Nagle wait)', { timeout: 20_000 }, async () => {
  const dir = mkdir('close-tcp');
  const server = net.createServer({ pauseOnConnect: true });
  try {
    const got = new Promise<PageServer>((r) => server.once('connection', (s) => r(PageServer.fromSocket(s, dir, { headerSize: 24 }))));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const sock = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
    await new Promise<void>((r) => sock.once('connect', () => r()));
    const peer = new Peer(sock);
    const ps = await got;
    await peer.send(hdr(24, OP.OPEN2, 0, 0, pid(1)));
    await peer.read(1);
    await peer.send(addF(24, 256, 0x1000), pages(256, 1));
    const t0 = performance.now();
    await peer.send(hdr(24, OP.CLOSE, 0, 0, 0));
    assert.equal((await peer.read(4)).readInt32LE(0), 0);
    const ms = performance.now() - t0;
    console.log(`# CLOSE -> status over loopback TCP: ${ms.toFixed(2)} ms`);
    assert.ok(ms < 50, `close took ${ms} ms`);
    assert.equal((await ps.done).pages, 256);
    peer.destroy();
  } finally {
    server.close();
  }
});

test('no descriptor leaked by any of the above', { timeout: 10_000 }, async () => {
  await sleep(100); // let destroyed Node sockets finish closing
  assert.equal(openFds(), fdsAtStart);
});

// ------------------------------------------------------------------ measurements (PHAUL_PS_BENCH=1)

/** frozen and memwrite times (µs) from criu's stats-dump (dump_stats_entry fields 2 and 4). */
function dumpStats(dir: string): { frozenMs: number; memwriteMs: number } {
  const b = fs.readFileSync(path.join(dir, 'stats-dump'));
  let i = 12; // two magics, record length
  const varint = () => { let v = 0; let s = 0; for (;;) { const c = b[i++]; v += (c & 0x7f) * 2 ** s; s += 7; if (!(c & 0x80)) return v; } };
  assert.equal(b[i++], 0x0a); // stats_entry.dump (length-delimited)
  const end = varint() + i;
  const f = new Map<number, number>();
  while (i < end) { const k = varint(); f.set(k >> 3, varint()); }
  return { frozenMs: (f.get(2) ?? 0) / 1000, memwriteMs: (f.get(4) ?? 0) / 1000 };
}

type Receiver = 'ours' | 'criu';
type Link = 'tcp' | 'socketpair';

/**
 * One `criu dump` of w into a receiver over a link; the dump's wall time and
 * stats. Receiver 'criu' is `criu page-server`. --leave-running when asked,
 * so one workload serves several dumps.
 */
async function dumpVia(w: Workload, who: Receiver, link: Link, base: string, extra: string[] = []) {
  const src = path.join(base, 'src');
  const dst = path.join(base, 'dst');
  for (const d of [src, dst]) { fs.rmSync(d, { recursive: true, force: true }); fs.mkdirSync(d, { recursive: true }); }
  let receiverDone: Promise<unknown>;
  let cleanup: () => void = () => undefined;
  let dumpLink: string[];
  let dumpFd: number | null = null;
  if (link === 'socketpair') {
    const [mine, theirs] = streamSocketPair();
    dumpLink = ['--ps-socket', '3'];
    dumpFd = theirs;
    if (who === 'ours') {
      receiverDone = PageServer.start(mine, dst, { headerSize }).done;
    } else {
      receiverDone = runCriuWithFd(['page-server', '-D', dst, '--ps-socket', '3', '-o', 'ps.log'], mine, 300_000);
      fs.closeSync(mine);
    }
  } else if (who === 'ours') {
    const server = net.createServer({ pauseOnConnect: true });
    receiverDone = new Promise((res, rej) => server.once('connection', (s) => {
      PageServer.fromSocket(s, dst, { headerSize, idleTimeoutMs: 60_000 }).done.then(res, rej);
    }));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    dumpLink = ['--address', '127.0.0.1', '--port', String((server.address() as net.AddressInfo).port)];
    cleanup = () => { server.close(); };
  } else {
    const port = 20000 + Math.floor(Math.random() * 20000);
    const ps = spawn(criu, ['page-server', '-D', dst, '--address', '127.0.0.1', '--port', String(port), '-o', 'ps.log',
      '--status-fd', '3'], { stdio: ['ignore', 'ignore', 'pipe', 'pipe'] });
    await new Promise<void>((r) => { (ps.stdio[3] as NodeJS.ReadableStream).once('data', () => r()); ps.once('exit', () => r()); });
    receiverDone = new Promise((r) => ps.once('close', r));
    dumpLink = ['--address', '127.0.0.1', '--port', String(port)];
    cleanup = () => { ps.kill('SIGKILL'); };
  }
  try {
    const r = await runCriuWithFd(['dump', '-t', String(w.init), '-D', src, '--page-server', ...dumpLink, '-o', 'dump.log', ...extra],
      dumpFd, 300_000);
    if (dumpFd !== null) fs.closeSync(dumpFd);
    assert.equal(r.code, 0, logTail(path.join(src, 'dump.log')));
    await receiverDone;
    const bytes = fs.readdirSync(dst).filter((f) => f.startsWith('pages-')).reduce((n, f) => n + fs.statSync(path.join(dst, f)).size, 0);
    return { wallMs: r.wallMs, bytes, src, ...dumpStats(src) };
  } finally {
    cleanup();
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

test('measure: 1 GiB dump through our page server vs criu page-server', { skip: skip || bench, timeout: 1_800_000 }, async () => {
  // tmpfs, as in docs/DESIGN.md section 11's table: the disk is not what is measured here.
  const base = fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : tmp, 'phaul-ps-bench-'));
  const rounds = Number(process.env.PHAUL_PS_ROUNDS ?? 5);
  const MIB = Number(process.env.PHAUL_PS_MIB ?? 1024);
  const w = await Workload.start(MIB, base);
  const results = new Map<string, Array<{ wallMs: number; frozenMs: number; memwriteMs: number; bytes: number }>>();
  try {
    for (let round = 0; round < rounds; round++) {
      const order: Array<[Receiver, Link]> = [['ours', 'tcp'], ['criu', 'tcp'], ['ours', 'socketpair'], ['criu', 'socketpair']];
      if (round % 2) order.reverse(); // page cache and neighbours favour neither side
      for (const [who, link] of order) {
        const r = await dumpVia(w, who, link, path.join(base, 'run'), ['--leave-running']);
        const key = `${who} over ${link}`;
        results.set(key, [...(results.get(key) ?? []), r]);
      }
    }
    for (const [key, rs] of results) {
      const mib = rs[0].bytes / 2 ** 20;
      console.log(`# ${key.padEnd(20)} ${mib.toFixed(0)} MiB: dump wall median ${median(rs.map((r) => r.wallMs)).toFixed(0)} ms ` +
        `[${rs.map((r) => r.wallMs.toFixed(0)).join(' ')}], frozen ${median(rs.map((r) => r.frozenMs)).toFixed(0)} ms, ` +
        `memwrite ${median(rs.map((r) => r.memwriteMs)).toFixed(0)} ms = ` +
        `${(rs[0].bytes / (median(rs.map((r) => r.memwriteMs)) / 1000) / 1e9).toFixed(2)} GB/s`);
    }
  } finally {
    await w.stop();
    fs.rmSync(base, { recursive: true, force: true });
  }
});

test('measure: close, from the dumping criu\'s own log (-v3): TCP (criu corks) vs socketpair', { skip: skip || bench, timeout: 300_000 }, async () => {
  const base = fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : tmp, 'phaul-ps-bench-'));
  const w = await Workload.start(64, base);
  try {
    for (const who of ['ours', 'criu'] as const) {
      for (const link of ['tcp', 'socketpair'] as const) {
        const gaps: number[] = [];
        for (let i = 0; i < 5; i++) {
          const r = await dumpVia(w, who, link, path.join(base, 'run'), ['--leave-running', '-v3']);
          // "(00.165424) page-xfer: Disconnect from the page server", then the next line: the CLOSE round trip.
          const lines = fs.readFileSync(path.join(r.src, 'dump.log'), 'utf8').split('\n');
          const k = lines.findIndex((l) => l.includes('Disconnect from the page server'));
          const ts = (l: string) => Number(/^\((\d+\.\d+)\)/.exec(l)![1]) * 1000;
          gaps.push(ts(lines[k + 1]) - ts(lines[k]));
        }
        console.log(`# CLOSE in a real dump, ${who} over ${link}: median ${median(gaps).toFixed(2)} ms [${gaps.map((g) => g.toFixed(2)).join(' ')}]`);
      }
    }
  } finally {
    await w.stop();
    fs.rmSync(base, { recursive: true, force: true });
  }
});

/** A page-server receiver on a random loopback port: ours, or `criu page-server`; `finish` settles when it ends. */
async function listenReceiver(who: Receiver, dst: string): Promise<{ port: number; finish: Promise<unknown>; server?: net.Server }> {
  const port = 20000 + Math.floor(Math.random() * 20000);
  if (who === 'ours') {
    const server = net.createServer({ pauseOnConnect: true });
    const finish = new Promise((res, rej) => server.once('connection', (s) => PageServer.fromSocket(s, dst, { headerSize }).done.then(res, rej)));
    await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
    return { port, finish, server };
  }
  const ps = spawn(criu, ['page-server', '-D', dst, '--address', '127.0.0.1', '--port', String(port), '--status-fd', '3'],
    { stdio: ['ignore', 'ignore', 'ignore', 'pipe'] });
  await new Promise<void>((r) => (ps.stdio[3] as NodeJS.ReadableStream).once('data', () => r()));
  return { port, finish: new Promise((r) => ps.once('close', r)) };
}

test('measure: CLOSE round trip, scripted peer over TCP (Node, Nagle on), ours vs criu page-server', { skip: skip || bench, timeout: 120_000 }, async () => {
  const N = 20;
  for (const who of ['ours', 'criu'] as const) {
    const times: number[] = [];
    for (let i = 0; i < N; i++) {
      const dst = mkdir('close-bench');
      const { port, finish, server } = await listenReceiver(who, dst);
      const sock = net.connect({ port, host: '127.0.0.1', noDelay: false });
      await new Promise<void>((r) => sock.once('connect', () => r()));
      const peer = new Peer(sock);
      await peer.send(hdr(headerSize, OP.OPEN2, 0, 0, pid(1)));
      await peer.read(1);
      await peer.send(addF(headerSize, 256, 0x1000), pages(256, 1));
      const t0 = performance.now();
      await peer.send(hdr(headerSize, OP.CLOSE, 0, 0, 0));
      await peer.read(4);
      times.push(performance.now() - t0);
      peer.destroy();
      await finish;
      server?.close();
    }
    console.log(`# CLOSE -> status, scripted Nagle peer, ${who}: median ${median(times).toFixed(3)} ms, max ${Math.max(...times).toFixed(3)} ms (${N} runs)`);
  }
});

test('measure: receiver alone, 1 GiB from a scripted sender over loopback TCP, ours vs criu page-server', { skip: skip || bench, timeout: 300_000 }, async () => {
  const base = fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : tmp, 'phaul-ps-bench-'));
  const ENTRY = 1024; // pages per ADD_F, like a full CRIU page pipe
  const chunk = pages(ENTRY, 7);
  const total = 1 << 30;
  const times = new Map<string, number[]>();
  try {
    for (let round = 0; round < 6; round++) {
      for (const who of (round % 2 ? ['criu', 'ours'] : ['ours', 'criu']) as Receiver[]) {
        const dst = path.join(base, 'dst');
        fs.rmSync(dst, { recursive: true, force: true });
        fs.mkdirSync(dst);
        const { port, finish, server } = await listenReceiver(who, dst);
        const sock = net.connect({ port, host: '127.0.0.1', noDelay: true });
        await new Promise<void>((r) => sock.once('connect', () => r()));
        const peer = new Peer(sock);
        const t0 = performance.now();
        await peer.send(hdr(headerSize, OP.OPEN2, 0, 0, pid(1)));
        await peer.read(1);
        for (let off = 0; off < total; off += chunk.length) {
          sock.write(addF(headerSize, ENTRY, 0x10000000 + off));
          if (!sock.write(chunk)) await new Promise((r) => sock.once('drain', r));
        }
        await peer.send(hdr(headerSize, OP.CLOSE, 0, 0, 0));
        await peer.read(4);
        const ms = performance.now() - t0;
        times.set(who, [...(times.get(who) ?? []), ms]);
        peer.destroy();
        await finish;
        server?.close();
      }
    }
    for (const [who, ts] of times) {
      console.log(`# receiver alone, ${who}: 1 GiB in median ${median(ts).toFixed(0)} ms = ${(total / median(ts) / 1e6).toFixed(2)} GB/s ` +
        `[${ts.map((t) => t.toFixed(0)).join(' ')}]`);
    }
  } finally {
    fs.rmSync(base, { recursive: true, force: true });
  }
});
