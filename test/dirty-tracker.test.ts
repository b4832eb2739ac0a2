// Dirty tracker, tree tracker and page reader against real processes (root).
// The workload (test/workloads/dirtyload.c) runs in its own pid namespace and
// records which pages it writes; every test checks against that record or
// against a byte-exact copy of the process.
//
// Run alone:  node --test dist/test/dirty-tracker.test.js
// Numbers:    the "measure" test prints lines starting with "dirty-tracker bench:".
import * as assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { test } from 'node:test';

import {
  DirtyTracker,
  DirtyTrackingError,
  TreeTracker,
  childrenOf,
  countPages,
  isZeroPage,
  readPages,
  selectPairs,
  triples,
  PAGE_SIZE,
  RANGE_PRESENT,
  RANGE_ZERO,
  VMA_FILE,
  VMA_TRACKED,
  type DirtySet,
} from '../src/memory';
import { addon } from '../src/native';
import { parseHeader, parseRanges } from '../src/transport/page-batch';

const ROOT = path.join(__dirname, '..', '..');
const SRC = path.join(ROOT, 'test', 'workloads', 'dirtyload.c');
const BIN = path.join(ROOT, 'build', 'workloads', 'dirtyload');
const PG = BigInt(PAGE_SIZE);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- child mode
// The SIGKILL test runs a tracker in a separate node process (this file, with
// PHAUL_DT_CHILD=<pid>) and kills it at random moments.
if (process.env.PHAUL_DT_CHILD) {
  void trackerChild(Number(process.env.PHAUL_DT_CHILD));
} else {
  registerTests();
}

async function trackerChild(pid: number): Promise<void> {
  const say = (s: string) => fs.writeSync(1, s + '\n');
  say('go');
  for (;;) {
    const t = new DirtyTracker(pid);
    say('start');
    await t.start();
    say('started');
    for (let i = 0; i < 3; i++) {
      const s = await t.scan();
      say('scanned');
      const pairs = selectPairs(s.ranges);
      await readPages(pid, pairs.subarray(0, Math.min(pairs.length, 64)));
      say('read');
    }
    t.close();
    say('closed');
  }
}

// ---------------------------------------------------------------- workload
function ensureWorkload(): void {
  if (fs.existsSync(BIN) && fs.statSync(BIN).mtimeMs >= fs.statSync(SRC).mtimeMs) return;
  fs.mkdirSync(path.dirname(BIN), { recursive: true });
  const r = spawnSync('gcc', ['-O2', '-Wall', '-o', BIN, SRC, '-lpthread'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`cannot compile ${SRC}: ${r.stderr}`);
}

function comm(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}

class Workload {
  pid = 0;
  data = 0n;
  pages = 0;
  private lines: string[] = [];
  private waiters: ((l: string) => void)[] = [];
  private constructor(readonly proc: ChildProcess) {
    readline.createInterface({ input: proc.stdout! }).on('line', (l) => {
      const w = this.waiters.shift();
      if (w) w(l);
      else this.lines.push(l);
    });
  }

  /** `setsid unshare -pf --fork dirtyload ...`: the workload is pid 1 of its own namespace. */
  static async start(pages: number, threads: number, rate: number): Promise<Workload> {
    ensureWorkload();
    const proc = spawn('setsid', ['-w', 'unshare', '-pf', '--fork', BIN, String(pages), String(threads), String(rate)], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    const w = new Workload(proc);
    live.add(w);
    const ready = await w.next(30000);
    const m = /^ready ([0-9a-f]+) (\d+)$/.exec(ready);
    assert.ok(m, `workload said ${ready}`);
    w.data = BigInt('0x' + m[1]);
    w.pages = Number(m[2]);
    // Find our pid of it: a descendant of setsid named dirtyload.
    for (let i = 0; i < 500 && !w.pid; i++) {
      const todo = [proc.pid!];
      while (todo.length && !w.pid) {
        const p = todo.pop()!;
        if (p !== proc.pid && comm(p) === 'dirtyload') w.pid = p;
        else todo.push(...childrenOf(p));
      }
      if (!w.pid) await sleep(10);
    }
    assert.ok(w.pid > 0, 'workload pid not found');
    return w;
  }

  next(timeoutMs = 20000): Promise<string> {
    const l = this.lines.shift();
    if (l !== undefined) return Promise.resolve(l);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('workload did not answer')), timeoutMs);
      this.waiters.push((line) => {
        clearTimeout(timer);
        resolve(line);
      });
    });
  }

  async cmd(c: string): Promise<string> {
    this.proc.stdin!.write(c + '\n');
    const r = await this.next();
    assert.ok(r.startsWith('ok'), `workload: ${c} -> ${r}`);
    return r.slice(3);
  }

  /** Pauses the writers; returns the data pages written since the last pause. */
  async pause(): Promise<Set<number>> {
    const hex = await this.cmd('pause');
    const set = new Set<number>();
    for (let w = 0; w * 16 < hex.length; w++) {
      const word = BigInt('0x' + hex.slice(w * 16, w * 16 + 16));
      if (word === 0n) continue;
      for (let b = 0; b < 64; b++) if ((word >> BigInt(b)) & 1n) set.add(w * 64 + b);
    }
    return set;
  }

  signal(sig: NodeJS.Signals, pid = this.pid): void {
    process.kill(pid, sig);
  }

  /** Kills the workload (its namespace dies with it); unshare reaps it and
   *  exits, so nothing is left for PID 1 to reap late. */
  async stop(): Promise<void> {
    live.delete(this);
    const exited = new Promise((r) => {
      if (this.proc.exitCode !== null || this.proc.signalCode !== null) r(null);
      else this.proc.once('exit', r);
    });
    try {
      if (this.pid) process.kill(this.pid, 'SIGKILL');
    } catch {
      // already gone
    }
    const timer = setTimeout(() => {
      try {
        process.kill(this.proc.pid!, 'SIGKILL');
      } catch {
        // gone
      }
    }, 2000);
    await exited;
    clearTimeout(timer);
  }
}

const live = new Set<Workload>();
process.on('exit', () => {
  for (const w of live) for (const p of [w.pid, w.proc.pid!]) try { process.kill(p, 'SIGKILL'); } catch { /* gone */ }
});

// ---------------------------------------------------------------- shadow copy
// What a migration destination would hold: pages copied with readPages after
// each scan, zero ranges as null, vanished ranges dropped.
class Shadow {
  pages = new Map<number, Uint8Array | null>();
  copiedBytes = 0;

  async apply(pid: number, s: DirtySet): Promise<void> {
    for (let i = 0; i + 1 < s.vanished.length; i += 2) this.drop(s.vanished[i], s.vanished[i + 1]);
    for (const r of triples(s.ranges)) if (r.flags & RANGE_ZERO) for (let a = r.start; a < r.end; a += PG) this.pages.set(Number(a), null);
    const pairs = selectPairs(s.ranges);
    if (!pairs.length) return;
    const rd = await readPages(pid, pairs);
    this.copiedBytes += rd.bytes;
    const missing = new Set<number>();
    for (let i = 0; i + 1 < rd.missing.length; i += 2) for (let a = rd.missing[i]; a < rd.missing[i + 1]; a += PG) missing.add(Number(a));
    let off = 0;
    for (let i = 0; i + 1 < pairs.length; i += 2) {
      for (let a = pairs[i]; a < pairs[i + 1]; a += PG, off += PAGE_SIZE) {
        if (missing.has(Number(a))) this.pages.delete(Number(a));
        else this.pages.set(Number(a), rd.buffer.subarray(off, off + PAGE_SIZE));
      }
    }
  }

  drop(s: bigint, e: bigint): void {
    for (const k of this.pages.keys()) if (k >= Number(s) && k < Number(e)) this.pages.delete(k);
  }

  /** Compares with the process (which must be stopped): every page of every
   *  tracked mapping must equal our copy. Returns the mismatching pages. */
  async compare(pid: number, t: DirtyTracker): Promise<{ compared: number; missed: number[]; skipped: number }> {
    const v = t.vmas();
    const missed: number[] = [];
    let compared = 0;
    let skipped = 0;
    for (let i = 0; i + 2 < v.ranges.length; i += 3) {
      const flags = Number(v.ranges[i + 2]);
      if (!(flags & VMA_TRACKED)) continue;
      const pair = BigUint64Array.of(v.ranges[i], v.ranges[i + 1]);
      const rd = await readPages(pid, pair);
      let off = 0;
      for (let a = pair[0]; a < pair[1]; a += PG, off += PAGE_SIZE) {
        const want = this.pages.get(Number(a));
        const got = rd.buffer.subarray(off, off + PAGE_SIZE);
        if (want === undefined) {
          missed.push(Number(a));
        } else if (want === null) {
          // "no page": zeros for anonymous memory, the file's content otherwise
          if (flags & VMA_FILE) skipped++;
          else if (got.some((b) => b !== 0)) missed.push(Number(a));
          else compared++;
        } else if (Buffer.compare(want, got) !== 0) {
          missed.push(Number(a));
        } else {
          compared++;
        }
      }
    }
    return { compared, missed, skipped };
  }
}

/** Data-region page indexes reported in a dirty set. */
function dataPages(w: Workload, s: DirtySet): Set<number> {
  const out = new Set<number>();
  const end = w.data + BigInt(w.pages) * PG;
  for (const r of triples(s.ranges)) {
    const a0 = r.start > w.data ? r.start : w.data;
    const a1 = r.end < end ? r.end : end;
    for (let a = a0; a < a1; a += PG) out.add(Number((a - w.data) / PG));
  }
  return out;
}

function covers(pairs: BigUint64Array, s: bigint, e: bigint): boolean {
  for (let i = 0; i + 1 < pairs.length; i += 2) if (pairs[i] <= s && e <= pairs[i + 1]) return true;
  return false;
}

function reported(s: DirtySet, start: bigint, pages: number, flag?: number): number {
  let n = 0;
  const end = start + BigInt(pages) * PG;
  for (const r of triples(s.ranges)) {
    if (flag !== undefined && !(r.flags & flag)) continue;
    const a0 = r.start > start ? r.start : start;
    const a1 = r.end < end ? r.end : end;
    if (a1 > a0) n += Number((a1 - a0) / PG);
  }
  return n;
}

function smapsHasUw(pid: number): boolean {
  return / uw/.test(fs.readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n').filter((l) => l.startsWith('VmFlags')).join('\n'));
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

const bench = (msg: string) => process.stdout.write(`dirty-tracker bench: ${msg}\n`);

// ---------------------------------------------------------------- tests
function registerTests(): void {
  const support = DirtyTracker.support();
  const skip = support.ok ? false : `dirty tracking unsupported here: ${support.reason}`;

  test('syscall injection runs one syscall in the target and leaves it intact', { skip }, async () => {
    const w = await Workload.start(256, 2, 2000);
    try {
      const status = fs.readFileSync(`/proc/${w.pid}/status`, 'utf8');
      const nspid = Number(/NSpid:\s+([\d\s]+)/.exec(status)![1].trim().split(/\s+/).pop());
      const times: number[] = [];
      for (let i = 0; i < 20; i++) {
        const r = addon().injectSyscall(w.pid, 39 /* getpid */);
        assert.equal(r.ret, nspid, 'getpid() run in the target answers its own pid (1 in its namespace)');
        times.push(r.ns / 1e3);
      }
      const bad = addon().injectSyscall(w.pid, 3 /* close */, [987654]);
      assert.equal(bad.ret, -9, 'a failing syscall returns -EBADF, the raw kernel value');
      bench(`injectSyscall(getpid): median ${median(times).toFixed(0)} us, max ${Math.max(...times).toFixed(0)} us (target held by ptrace)`);
      assert.match(await w.cmd('verify'), /^\d+$/);
    } finally {
      await w.stop();
    }
  });

  test('no page lost: writers paused between rounds, reported set == written set', { skip }, async () => {
    const w = await Workload.start(16384, 4, 20000);
    const t = new DirtyTracker(w.pid);
    try {
      await w.pause();
      await t.start();
      const s0 = await t.scan();
      assert.ok(s0.first);
      assert.equal(dataPages(w, s0).size, w.pages, 'the first scan reports every page');
      let written = 0;
      for (let round = 1; round <= 6; round++) {
        await w.cmd('resume');
        await sleep(120);
        const wrote = await w.pause();
        const s = await t.scan();
        assert.ok(!s.first);
        const got = dataPages(w, s);
        const missed = [...wrote].filter((p) => !got.has(p));
        const extra = [...got].filter((p) => !wrote.has(p));
        assert.equal(missed.length, 0, `round ${round}: ${missed.length} written pages not reported`);
        assert.equal(extra.length, 0, `round ${round}: ${extra.length} pages reported but not written`);
        assert.ok(wrote.size > 100, `round ${round}: the workload wrote only ${wrote.size} pages`);
        written += wrote.size;
      }
      bench(`paused rounds: 6 rounds, ${written} written pages, 0 missed, 0 false positives in the data region`);
      await w.cmd('resume');
    } finally {
      t.close();
      await w.stop();
    }
  });

  test('no page lost: concurrent writers; copies + dirty sets rebuild memory exactly', { skip }, async () => {
    const w = await Workload.start(16384, 4, 50000);
    const t = new DirtyTracker(w.pid);
    const shadow = new Shadow();
    try {
      await t.start();
      for (let round = 0; round < 8; round++) {
        const s = await t.scan();
        await shadow.apply(w.pid, s);
        await sleep(60);
      }
      w.signal('SIGSTOP');
      await sleep(20);
      const last = await t.scan();
      await shadow.apply(w.pid, last);
      const c = await shadow.compare(w.pid, t);
      assert.deepEqual(c.missed, [], `${c.missed.length} pages differ from the copy`);
      assert.ok(c.compared >= w.pages, `compared ${c.compared} pages`);
      bench(`concurrent rounds: 8 rounds + final, ${c.compared} pages compared byte-exact, 0 missed (${c.skipped} file pages skipped)`);
      w.signal('SIGCONT');
      assert.match(await w.cmd('verify'), /^\d+$/);
    } finally {
      t.close();
      await w.stop();
    }
  });

  test('mmap, mremap, brk, MADV_DONTNEED and munmap during tracking', { skip }, async () => {
    const w = await Workload.start(1024, 2, 5000);
    const t = new DirtyTracker(w.pid);
    const shadow = new Shadow();
    try {
      await t.start();
      await shadow.apply(w.pid, await t.scan());

      const A = BigInt('0x' + (await w.cmd('mmap 100')));
      let s = await t.scan();
      assert.ok(s.untracked.length > 0, 'PROT_NONE guard pages of thread stacks stay untracked');
      await shadow.apply(w.pid, s);
      assert.ok(covers(s.newVmas, A, A + 0x100n * PG), 'new mmap is reported as a new VMA');
      assert.equal(reported(s, A, 0x100, RANGE_PRESENT), 0x100, 'all its pages are reported');
      assert.equal(countPages(t.present(A, A + 0x100n * PG), 3), 0x100, 'present() sees the same pages without write-protecting');

      const B = BigInt('0x' + (await w.cmd(`mremap ${A.toString(16)} 100 400`)));
      s = await t.scan();
      await shadow.apply(w.pid, s);
      assert.equal(reported(s, B, 0x400), 0x400, 'every page of the remapped region is reported');
      if (B !== A) assert.ok(covers(s.vanished, A, A + 0x100n * PG), 'the old place of a moved region is reported vanished');

      const H = BigInt('0x' + (await w.cmd('brk 40')));
      s = await t.scan();
      await shadow.apply(w.pid, s);
      assert.ok(reported(s, H, 0x3f) >= 0x3f, 'brk growth is reported');

      const C = BigInt('0x' + (await w.cmd('mmap 40')));
      await shadow.apply(w.pid, await t.scan());
      await w.cmd(`dontneed ${C.toString(16)} 40`);
      s = await t.scan();
      await shadow.apply(w.pid, s);
      assert.equal(reported(s, C, 0x40, RANGE_ZERO), 0x40, 'MADV_DONTNEED pages are reported as zero ranges');

      await w.cmd(`munmap ${B.toString(16)} 400`);
      s = await t.scan();
      await shadow.apply(w.pid, s);
      assert.ok(covers(s.vanished, B, B + 0x400n * PG), 'munmap is reported as vanished');

      // A region mapped over tracked memory with MAP_FIXED-like reuse: unmap and
      // map the same size again; the kernel may reuse the addresses.
      const D = BigInt('0x' + (await w.cmd('mmap 80')));
      await shadow.apply(w.pid, await t.scan());
      await w.cmd(`munmap ${D.toString(16)} 80`);
      const E = BigInt('0x' + (await w.cmd('mmap 80')));
      s = await t.scan();
      await shadow.apply(w.pid, s);
      assert.equal(reported(s, E, 0x80, RANGE_PRESENT), 0x80, 'a mapping that replaced a tracked one is reported in full');

      w.signal('SIGSTOP');
      await sleep(20);
      await shadow.apply(w.pid, await t.scan());
      const c = await shadow.compare(w.pid, t);
      assert.deepEqual(c.missed, [], `${c.missed.length} pages differ from the copy`);
      w.signal('SIGCONT');
      assert.match(await w.cmd('verify'), /^\d+$/);
      bench(`address-space changes: ${c.compared} pages byte-exact after mmap/mremap/brk/dontneed/munmap/reuse, eperm retries ${t.stats().epermRetries}`);
    } finally {
      t.close();
      await w.stop();
    }
  });

  test('TreeTracker picks up a fork child and tracks it separately', { skip }, async () => {
    const w = await Workload.start(2048, 2, 20000);
    const tree = new TreeTracker(w.pid);
    const shadows = new Map<number, Shadow>();
    const apply = async (sets: Map<number, DirtySet>) => {
      for (const [pid, s] of sets) {
        if (!shadows.has(pid)) shadows.set(pid, new Shadow());
        await shadows.get(pid)!.apply(pid, s);
      }
    };
    try {
      await tree.start();
      await apply((await tree.scan()).sets);
      await w.cmd('fork');
      const [child] = childrenOf(w.pid);
      assert.ok(child > 0, 'fork child exists');
      const r = await tree.scan();
      assert.deepEqual(r.added, [child], 'the child is tracked from the next round');
      assert.ok(r.sets.get(child)!.first, "the child's first set is a full copy");
      assert.ok(!r.sets.get(w.pid)!.first);
      await apply(r.sets);
      for (let i = 0; i < 3; i++) {
        await sleep(80);
        await apply((await tree.scan()).sets);
      }
      w.signal('SIGSTOP', child);
      w.signal('SIGSTOP');
      await sleep(20);
      const last = await tree.scan();
      await apply(last.sets);
      for (const pid of [w.pid, child]) {
        const c = await shadows.get(pid)!.compare(pid, tree.tracker(pid)!);
        assert.deepEqual(c.missed, [], `pid ${pid}: ${c.missed.length} pages differ from the copy`);
      }
      // Both wrote their own copies: the data regions now differ.
      const a = await readPages(w.pid, BigUint64Array.of(w.data, w.data + BigInt(w.pages) * PG));
      const b = await readPages(child, BigUint64Array.of(w.data, w.data + BigInt(w.pages) * PG));
      assert.notEqual(Buffer.compare(a.buffer, b.buffer), 0);
      w.signal('SIGCONT', child);
      w.signal('SIGCONT');
      assert.match(await w.cmd('verify'), /^\d+$/);
    } finally {
      tree.close();
      await w.stop();
    }
  });

  test('a process that uses userfaultfd itself: typed fallback error, process untouched', { skip }, async () => {
    const w = await Workload.start(256, 1, 1000);
    try {
      await w.cmd('uffd');
      const t = new DirtyTracker(w.pid);
      await assert.rejects(t.start(), (e: unknown) => {
        assert.ok(e instanceof DirtyTrackingError);
        assert.equal(e.reason, 'uffd-in-use');
        assert.equal(e.code, 'unavailable');
        assert.ok(e.fallback);
        return true;
      });
      t.close();
      const tree = new TreeTracker(w.pid);
      await assert.rejects(tree.start(), (e: unknown) => e instanceof DirtyTrackingError && e.fallback);
      tree.close();
      assert.match(await w.cmd('verify'), /^\d+$/);
    } finally {
      await w.stop();
    }
  });

  test('tracker process SIGKILLed at random moments: the workload runs on, memory intact', { skip }, async () => {
    const w = await Workload.start(4096, 2, 20000);
    const phases: Record<string, number> = {};
    try {
      for (let i = 0; i < 24; i++) {
        const child = spawn(process.execPath, [__filename], {
          env: { ...process.env, PHAUL_DT_CHILD: String(w.pid) },
          stdio: ['ignore', 'pipe', 'inherit'],
        });
        let last = '';
        readline.createInterface({ input: child.stdout! }).on('line', (l) => (last = l));
        while (last === '') await sleep(1);
        // Half the kills land within the first milliseconds (start: injection,
        // registration), the rest anywhere in scan/read rounds.
        await sleep(i % 2 ? Math.random() * 3 : 5 + Math.random() * 60);
        child.kill('SIGKILL');
        await new Promise((r) => child.once('exit', r));
        phases[last] = (phases[last] ?? 0) + 1;
        assert.ok(fs.existsSync(`/proc/${w.pid}`), `workload died after kill #${i} (during ${last})`);
      }
      // The uffd dies with its holder: no registration may remain.
      for (let i = 0; i < 100 && smapsHasUw(w.pid); i++) await sleep(20);
      assert.ok(!smapsHasUw(w.pid), 'uffd-wp registrations remain after the tracker died');
      assert.match(await w.cmd('verify'), /^\d+$/, 'workload memory is consistent');
      // and it keeps writing
      await w.pause();
      await w.cmd('resume');
      await sleep(50);
      assert.ok((await w.pause()).size > 0);
      bench(`SIGKILL of the tracker x24, last phase before kill: ${JSON.stringify(phases)}; workload alive and consistent`);
    } finally {
      await w.stop();
    }
  });

  test('tracker SIGKILLed while the target holds injected registers: the helper finishes, the target lives', { skip }, async () => {
    // PHAUL_TEST_INJECT_HOLD_MS makes the injection pause 300 ms in the
    // single-step trap stop, with the target's registers replaced: the window
    // in which a dying tracer would kill (SIGTRAP) or derail the target.
    const w = await Workload.start(1024, 2, 20000);
    try {
      for (let i = 0; i < 3; i++) {
        const child = spawn(process.execPath, [__filename], {
          env: { ...process.env, PHAUL_DT_CHILD: String(w.pid), PHAUL_TEST_INJECT_HOLD_MS: '300' },
          stdio: ['ignore', 'pipe', 'inherit'],
        });
        let last = '';
        readline.createInterface({ input: child.stdout! }).on('line', (l) => (last = l));
        while (last !== 'start') await sleep(1);
        // wait until the target is actually held by a tracer
        let tracer = 0;
        for (let k = 0; k < 200 && !tracer; k++) {
          tracer = Number(/TracerPid:\s+(\d+)/.exec(fs.readFileSync(`/proc/${w.pid}/status`, 'utf8'))![1]);
          if (!tracer) await sleep(1);
        }
        assert.ok(tracer > 0, 'the injection did not start');
        assert.notEqual(tracer, child.pid, 'ptrace must be held by the helper, not by the node process');
        await sleep(50);
        child.kill('SIGKILL');
        await new Promise((r) => child.once('exit', r));
        // the helper completes, parks, restores and detaches on its own
        const tracerOf = () => Number(/TracerPid:\s+(\d+)/.exec(fs.readFileSync(`/proc/${w.pid}/status`, 'utf8'))![1]);
        for (let k = 0; k < 200 && tracerOf() !== 0; k++) await sleep(10);
        assert.equal(tracerOf(), 0, 'the target is still traced');
        for (let k = 0; k < 300 && fs.existsSync(`/proc/${tracer}`) && !/State:\s+Z/.test(fs.readFileSync(`/proc/${tracer}/status`, 'utf8')); k++) await sleep(10);
        assert.ok(fs.existsSync(`/proc/${w.pid}`), 'workload died');
        assert.match(await w.cmd('verify'), /^\d+$/);
      }
      assert.ok(!smapsHasUw(w.pid));
      await w.pause();
      await w.cmd('resume');
      await sleep(50);
      assert.ok((await w.pause()).size > 0, 'the workload still writes');
    } finally {
      await w.stop();
    }
  });

  test('unprotect: empty pages lose their markers, count as written, and later writes are still seen', { skip }, async () => {
    const w = await Workload.start(64, 0, 0);
    const t = new DirtyTracker(w.pid);
    /** /proc/PID/pagemap bits 63 (present) and 62 (swapped, which a uffd-wp marker looks like) of data page i. */
    const pm = (i: number) => {
      const fd = fs.openSync(`/proc/${w.pid}/pagemap`, 'r');
      try {
        const b = Buffer.alloc(8);
        fs.readSync(fd, b, 0, 8, Number((w.data / PG + BigInt(i)) * 8n));
        const v = b.readBigUInt64LE(0);
        return { present: (v >> 63n) & 1n, swapped: (v >> 62n) & 1n };
      } catch { return { present: -1n, swapped: -1n }; } finally { fs.closeSync(fd); }
    };
    try {
      await t.start();
      await t.scan();
      await w.cmd(`dontneed ${w.data.toString(16)} 8`);
      const zapped = await t.scan();
      assert.equal(reported(zapped, w.data, 8, RANGE_ZERO), 8, 'zapped pages come as zeros (and get markers)');
      assert.equal((await t.scan()).pages, 0);
      assert.deepEqual(pm(3), { present: 0n, swapped: 1n }, 'a marker looks like a swapped page');
      assert.equal(t.unprotect(BigUint64Array.of(w.data, w.data + 8n * PG, 0x1000n, 0x2000n)), 8 * PAGE_SIZE, 'only registered memory');
      assert.deepEqual(pm(3), { present: 0n, swapped: 0n }, 'no marker any more');
      const again = await t.scan({ protect: false });
      assert.equal(reported(again, w.data, 8, RANGE_ZERO), 8, 'unprotected empty pages count as written');
      assert.deepEqual(pm(3), { present: 0n, swapped: 0n }, 'protect: false left them alone');
      await w.cmd('dirty 1');
      const after = await t.scan();
      assert.equal(reported(after, w.data, 8, RANGE_PRESENT), 8, 'writes after unprotect are seen');
      assert.equal(reported(after, w.data, 64, RANGE_PRESENT), 64, 'and every other data page');
      assert.match(await w.cmd('verify'), /^\d+$/);
    } finally {
      t.close();
      await w.stop();
    }
  });

  test('readPages reports vanished pages (never as zeros) and zero pages', { skip }, async () => {
    const w = await Workload.start(64, 0, 0);
    try {
      const A = BigInt('0x' + (await w.cmd('mmap 10')));
      const C = BigInt('0x' + (await w.cmd('mmap 8')));
      await w.cmd(`dontneed ${C.toString(16)} 8`);
      await w.cmd(`munmap ${A.toString(16)} 10`);
      const ranges = BigUint64Array.of(w.data, w.data + 4n * PG, A, A + 0x10n * PG, C, C + 8n * PG);
      const r = await readPages(w.pid, ranges, { zeroMap: true });
      assert.equal(r.bytes, (4 + 16 + 8) * PAGE_SIZE);
      assert.deepEqual([...r.missing], [A, A + 0x10n * PG]);
      assert.equal(r.zeroPages, 8, 'dontneed pages are zero; vanished ones are missing, not zero');
      assert.ok(!isZeroPage(r.zeroMap!, 0) && !isZeroPage(r.zeroMap!, 4) && isZeroPage(r.zeroMap!, 27));
      assert.ok(r.missingMap && isZeroPage(r.missingMap, 4) && isZeroPage(r.missingMap, 19) && !isZeroPage(r.missingMap, 20), 'the vanished pages, and only they, are in missingMap');
      assert.equal(Buffer.from(r.buffer.buffer, r.buffer.byteOffset, r.buffer.byteLength).readBigUInt64LE(PAGE_SIZE), 1n, 'page 1 of the data region starts with its index');
      await assert.rejects(readPages(w.pid, BigUint64Array.of(w.data + 1n, w.data + PG)), /page-aligned/);
    } finally {
      await w.stop();
    }
  });

  test('PROT_NONE pages hold data: readPages and sendPages read them (/proc/PID/mem); a vanished page is sent neither as data nor as zeros', { skip }, async () => {
    const w = await Workload.start(64, 0, 0);
    const [a, b] = addon().streamSocketPair();
    const tx = new (addon().BatchConn)(a);
    const rx = new (addon().BatchConn)(b);
    try {
      const A = BigInt('0x' + (await w.cmd('mmap 8')));
      const hex = (x: bigint) => x.toString(16);
      const whole = BigUint64Array.of(A, A + 8n * PG);
      const before = Buffer.from((await readPages(w.pid, whole)).buffer);
      await w.cmd(`protect ${hex(A + 2n * PG)} 3 0`);
      await w.cmd(`munmap ${hex(A + 6n * PG)} 1`);
      const r = await readPages(w.pid, whole, { zeroMap: true });
      assert.equal(r.forcedPages, 3, 'the three PROT_NONE pages were read through /proc/PID/mem');
      assert.deepEqual([...r.missing], [A + 6n * PG, A + 7n * PG], 'only the unmapped page is missing');
      const got = Buffer.from(r.buffer.buffer, r.buffer.byteOffset, r.buffer.byteLength);
      for (const p of [0, 1, 2, 3, 4, 5, 7]) assert.ok(got.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE).equals(before.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE)), `page ${p} as it was written`);
      assert.equal(r.zeroPages, 0);

      const txBuf = Buffer.alloc(8 * PAGE_SIZE);
      const [sent, batch] = await Promise.all([tx.sendPages(w.pid, 1, whole, txBuf), rx.read(Buffer.alloc(8 * PAGE_SIZE))]);
      assert.equal(sent.missingPages, 1);
      assert.equal(sent.forcedPages, 3);
      assert.equal(sent.zeroPages, 0);
      assert.ok(!batch.end && batch.ranges);
      const h = parseHeader(batch.head);
      const listed = parseRanges(h, batch.ranges).map((x) => [BigInt(x.vaddr), x.nrPages, !!x.zero]);
      assert.deepEqual(listed, [[A, 6, false], [A + 7n * PG, 1, false]], 'the batch lists every page but the vanished one, none as zeros');
      assert.equal(h.rawLen, 7 * PAGE_SIZE);
    } finally {
      tx.close();
      rx.close();
      await w.stop();
    }
  });

  test('measure: scan cost per GiB (clean, 10% dirty, all dirty), start, readPages 1 GiB', { skip }, async () => {
    const pages = 262144; // 1 GiB
    const w = await Workload.start(pages, 0, 0);
    const t = new DirtyTracker(w.pid);
    try {
      const st = await t.start();
      bench(`start(): ${st.startMs.toFixed(2)} ms, of which the target was held ${st.injectMs.toFixed(3)} ms`);
      const first = await t.scan();
      const gib = first.trackedBytes / 2 ** 30;
      bench(`first scan (reports all ${first.pages} pages): ${first.timing.totalMs.toFixed(2)} ms`);
      const clean: number[] = [];
      for (let i = 0; i < 7; i++) clean.push((await t.scan()).timing.scanMs);
      bench(`clean scan: ${(median(clean) / gib).toFixed(3)} ms/GiB (median of 7; ${gib.toFixed(3)} GiB tracked)`);
      await w.cmd('dirty 10');
      const d10 = await t.scan();
      assert.ok(d10.pages >= pages / 10, `10% dirty: ${d10.pages} pages`);
      bench(`10% dirty scan: ${(d10.timing.scanMs / gib).toFixed(3)} ms/GiB, ${d10.pages} pages in ${d10.ranges.length / 3} ranges (+maps ${d10.timing.mapsMs.toFixed(2)} ms)`);
      const scattered = selectPairs(d10.ranges);
      const rs = await readPages(w.pid, scattered);
      bench(`readPages scattered (${countPages(scattered, 2)} single pages): ${(rs.bytes / rs.ms / 1e6).toFixed(2)} GB/s, ${rs.calls} calls`);
      await w.cmd('dirty 1');
      const d100 = await t.scan();
      assert.ok(d100.pages >= pages);
      bench(`all dirty scan: ${(d100.timing.scanMs / gib).toFixed(3)} ms/GiB`);

      const region = BigUint64Array.of(w.data, w.data + BigInt(pages) * PG);
      const buf = Buffer.allocUnsafe(pages * PAGE_SIZE);
      const speeds: number[] = [];
      for (let i = 0; i < 3; i++) {
        const r = await readPages(w.pid, region, { buffer: buf });
        assert.equal(r.bytes, pages * PAGE_SIZE);
        speeds.push(r.bytes / r.ms / 1e6);
      }
      bench(`readPages 1 GiB contiguous: ${median(speeds).toFixed(2)} GB/s (median of 3)`);
      const z = await readPages(w.pid, region, { buffer: buf, zeroMap: true });
      bench(`readPages 1 GiB + zero detection: ${(z.bytes / z.ms / 1e6).toFixed(2)} GB/s`);
      // the event loop stays free during a read
      let ticks = 0;
      const iv = setInterval(() => ticks++, 1);
      await readPages(w.pid, region, { buffer: buf });
      clearInterval(iv);
      assert.ok(ticks > 5, `event loop ran ${ticks} times during a 1 GiB read`);
    } finally {
      t.close();
      await w.stop();
    }
  });
}
