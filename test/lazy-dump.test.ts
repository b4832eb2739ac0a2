// The switchover's lazy dump (src/criu/lazy-dump.ts) with real CRIU: started
// ahead, it waits at its gate (its log FIFO) without freezing anything; freeze()
// opens the gate and sees the tree stopped; a rollback at either point leaves
// the workload running and intact, with no CRIU left behind and its log a plain file.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LazyDump } from '../src/criu/lazy-dump';
import { procState } from '../src/agent/process-tree';
import { type MemWorkload, startMemWorkload } from '../src/testing/workload';
import { sleep } from '../src/testing/proc';
import { PACKAGE_ROOT } from '../src/package-root';
import { criuBinary } from '../src/criu/binary';
import { spawn } from 'node:child_process';
import { PAGE_SIZE, PE_LAZY, PE_PRESENT, readPagemapImage } from '../src/store/pagemap-image';

const root = process.getuid?.() === 0;
const skip = root ? false : 'needs root (CRIU)';

/** Processes whose command line or environment mentions `needle` (zombies aside): CRIU names the
 *  images directory in its arguments. */
function processesWith(needle: string): number[] {
  const has = (p: number, f: string) => { try { return fs.readFileSync(`/proc/${p}/${f}`, 'utf8').includes(needle); } catch { return false; } };
  return fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p)).map(Number)
    .filter((p) => p !== process.pid && (has(p, 'cmdline') || has(p, 'environ')) && procState(p) !== 'Z');
}

const running = (pid: number) => ['R', 'S', 'D'].includes(procState(pid) ?? '');

/** After a rollback: the workload runs again and every page it checks is intact. */
async function assertResumedIntact(w: MemWorkload): Promise<void> {
  await sleep(100);
  assert.ok(running(w.pid), `the workload runs again (state ${procState(w.pid)})`);
  const rep = await w.report();
  assert.equal(rep.ok, true, JSON.stringify(rep));
  assert.equal(rep.badPages, 0);
}

for (const when of ['at the gate', 'after the freeze'] as const) {
  test(`lazy dump: a rollback ${when} leaves the workload running and intact, and no CRIU behind`, { skip, timeout: 120_000 }, async () => {
    const w = await startMemWorkload({ mib: 16, writeMBps: 5 });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'phaul-test-lazydump-'));
    let dump: LazyDump | undefined;
    try {
      dump = new LazyDump({ pid: w.pid, imagesDir: dir, headerSize: 32 });
      // Long enough for CRIU to start and reach its gate; it must not freeze the tree meanwhile.
      await sleep(1500);
      assert.ok(running(w.pid), `the workload runs while CRIU waits at its gate (state ${procState(w.pid)})`);
      assert.equal(dump.frozenAt, 0);
      if (when === 'after the freeze') {
        await dump.freeze();
        assert.ok(dump.frozenAt > 0);
        assert.ok(['t', 'T'].includes(procState(w.pid) ?? ''), `frozen by CRIU (state ${procState(w.pid)})`);
        await dump.ready;
        // The dump's CPU, from CRIU's own process and the frozen tree (its parasite), is measured
        // whenever the freeze was seen before the images were ready (a 1 ms poll against a dump
        // of tens of ms: practically always).
        if (dump.frozenAt < dump.readyAt) {
          assert.ok(dump.dumpCpu, 'dumpCpu is set once the images are ready');
          assert.ok(dump.dumpCpu.criuMs > 0 && dump.dumpCpu.criuMs < 60_000, `criu on CPU ${dump.dumpCpu.criuMs} ms`);
          assert.ok(dump.dumpCpu.parasiteMs >= 0 && dump.dumpCpu.parasiteMs < 60_000, `parasite ${dump.dumpCpu.parasiteMs} ms`);
        }
      }
      await dump.rollback();
      const code = await dump.exited;
      assert.notEqual(code, 0, 'CRIU did not complete a dump');
      await assertResumedIntact(w);
      assert.deepEqual(processesWith(dir), [], 'no CRIU is left');
      assert.ok(fs.lstatSync(path.join(dir, 'dump.log')).isFile(), 'the log FIFO became a plain file');
    } finally {
      await dump?.rollback();
      await w.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}

// CRIU's lazy dump used to copy one iovec per page of the tree's private
// mappings into its parasite's arguments (16 MiB of fresh memory at 4 GiB,
// ~110 ms of the pause); setup builds CRIU with that copy cut to the iovecs it
// filled (scripts/setup.sh patch_criu_source). An 8 GiB mapping with 4 MiB
// touched needs 32 MiB more of CRIU without the fix, nothing with it.
const ownCriu = (() => { try { return criuBinary() === path.join(PACKAGE_ROOT, '.criu', 'sbin', 'criu'); } catch { return false; } })();
/** What setup recorded of the changes it built CRIU with (scripts/setup.sh CRIU_PATCHES). */
const criuPatches = (() => { try { return fs.readFileSync(path.join(PACKAGE_ROOT, '.criu', 'patches'), 'utf8').split(/\s+/); } catch { return []; } })();
const skipFix = skip
  || (!ownCriu && 'CRIU is not the one setup builds with the lazy changes (a system CRIU or PHAUL_FAST_CRIU)')
  || (!criuPatches.includes('lazy-unpinned-1') && '.criu was built before the lazy changes: bash scripts/setup.sh rebuilds it')
  || false;
test('lazy dump: CRIU does not grow with the size of the tree\'s untouched mappings (the lazy iovec fix)', { skip: skipFix, timeout: 120_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'phaul-test-lazydump-'));
  const report = path.join(dir, 'report.json');
  const read = () => { try { return JSON.parse(fs.readFileSync(report, 'utf8')); } catch { return null; } };
  // sparsework setsid()s itself: CRIU dumps it as a whole session.
  const child = spawn(path.join(PACKAGE_ROOT, 'build', 'workloads', 'sparsework'), ['8192', '4', report], { stdio: 'ignore' });
  const pid = child.pid!;
  let dump: LazyDump | undefined;
  try {
    const end = Date.now() + 10_000;
    while (!read()) { assert.ok(Date.now() < end && child.exitCode === null, 'sparsework did not start'); await sleep(20); }
    fs.mkdirSync(path.join(dir, 'img'));
    dump = new LazyDump({ pid, imagesDir: path.join(dir, 'img'), headerSize: 32 });
    await dump.freeze();
    await dump.ready;
    const peak = dump.criuPeakRssKiB;
    assert.ok(peak !== undefined && peak > 0, 'CRIU\'s peak memory is known once its images are ready');
    assert.ok(peak < 24 * 1024, `CRIU's peak memory ${peak} KiB for an 8 GiB mapping: built without the lazy iovec fix? (bash scripts/setup.sh rebuilds it)`);
    await dump.rollback();
    await sleep(100);
    assert.ok(running(pid), `the workload runs again (state ${procState(pid)})`);
    const seq = read().seq;
    process.kill(pid, 'SIGUSR1');
    while (read().seq === seq) { assert.ok(Date.now() < end + 20_000, 'no report'); await sleep(20); }
    const r = read();
    assert.equal(r.ok, true, JSON.stringify(r));
  } finally {
    await dump?.rollback();
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// With CRIU_LAZY_PAGES_UNPINNED (LazyDump sets it) the CRIU setup builds hands
// no lazy page to its parasite: the pages CRIU's -v4 log says it gave the
// parasite ("PPB: N pages") are only the non-lazy ones. The images still list
// every lazy page, and a rollback leaves the tree running and intact.
test('lazy dump: the lazy pages are not pinned into CRIU\'s pipes, and a rollback leaves the tree intact', { skip: skipFix, timeout: 120_000 }, async () => {
  const w = await startMemWorkload({ mib: 64, writeMBps: 5 });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'phaul-test-lazydump-'));
  let dump: LazyDump | undefined;
  try {
    dump = new LazyDump({ pid: w.pid, imagesDir: dir, headerSize: 32, extraArgs: ['-v4'] });
    await dump.freeze();
    await dump.ready;
    await dump.rollback();
    const log = fs.readFileSync(path.join(dir, 'dump.log'), 'utf8');
    let total = 0, lazy = 0, toParasite = 0;
    for (const m of log.matchAll(/Pagemap generated: (\d+) pages \((\d+) lazy\)/g)) { total += Number(m[1]); lazy += Number(m[2]); }
    for (const m of log.matchAll(/PPB: (\d+) pages/g)) toParasite += Number(m[1]);
    assert.ok(lazy >= 16384, `CRIU's log lists ${lazy} lazy pages of ${total} (64 MiB of memwork)`);
    assert.ok(toParasite > 0 && toParasite <= total - lazy, `${toParasite} pages went to the parasite; only the ${total - lazy} non-lazy ones should`);
    await assertResumedIntact(w);
  } finally {
    await dump?.rollback();
    await w.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// Two more changes of the CRIU setup builds (scripts/setup.sh patch_criu_source),
// each cutting time the frozen tree waits per GiB and neither changing what the
// images say: pagemap-anon scans a private anonymous mapping without
// PAGEMAP_SCAN's file category (which costs a struct page lookup per present
// page), lazy-pipeless (with CRIU_LAZY_PAGES_UNPINNED, which LazyDump sets) keeps
// all lazy pages in one empty pipe instead of one grown pipe per 1024 pages,
// and lazy-regions adds a scanned region's lazy pages at once, not page by page.
// The images must still list every page memwork wrote as lazy and no page of a
// file mapping it only read (libc's code): dropping the file category where a
// mapping can hold file pages would list those.
const skipScan = skipFix
  || (!['pagemap-anon-1', 'lazy-pipeless-1', 'lazy-regions-1'].every((p) => criuPatches.includes(p)) && '.criu was built before the pagemap-anon, lazy-pipeless and lazy-regions changes: bash scripts/setup.sh rebuilds it')
  || false;
test('lazy dump: anonymous memory is scanned without the file category, its lazy pages added by region into one pipe; the images list exactly the written pages', { skip: skipScan, timeout: 120_000 }, async () => {
  const mib = 64;
  const w = await startMemWorkload({ mib, writeMBps: 5 });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'phaul-test-lazydump-'));
  let dump: LazyDump | undefined;
  try {
    const buf = Number.parseInt((await w.report()).addr, 16);
    const code = fs.readFileSync(`/proc/${w.pid}/maps`, 'utf8').split('\n')
      .map((l) => /^([0-9a-f]+)-([0-9a-f]+) r-xp \S+ \S+ [1-9]\d* +(\S*libc[^/]*\.so\S*)$/.exec(l))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => ({ start: Number.parseInt(m[1], 16), end: Number.parseInt(m[2], 16), file: m[3] }));
    assert.equal(code.length, 1, 'memwork maps libc\'s code once');
    dump = new LazyDump({ pid: w.pid, imagesDir: dir, headerSize: 32, extraArgs: ['-v4'] });
    await dump.freeze();
    await dump.ready;
    // The images as CRIU left them for its lazy-pages client (a rollback deletes them).
    // memwork is alone in its pid namespace: its image id is its pid there, not w.pid.
    const images = fs.readdirSync(dir).filter((f) => /^pagemap-\d+\.img$/.test(f));
    assert.equal(images.length, 1, `one process dumped: ${images.join(', ')}`);
    const entries = readPagemapImage(path.join(dir, images[0])).entries;
    await dump.rollback();
    const log = fs.readFileSync(path.join(dir, 'dump.log'), 'utf8');
    assert.match(log, new RegExp(`pagemap-cache: ${w.pid}: private anonymous, scanned without the file category`),
      'CRIU scanned the buffer without the file category (pagemap-anon)');
    const runs = [...log.matchAll(/lazy run of (\d+) pages at ([0-9a-f]+) added at once/g)].map((m) => ({ n: Number(m[1]), at: Number.parseInt(m[2], 16) }));
    assert.ok(runs.some((r) => r.at <= buf && r.at + r.n * PAGE_SIZE >= buf + mib * 1024 * 1024),
      `CRIU added memwork's buffer as one run, not page by page (lazy-regions): ${JSON.stringify(runs)}`);
    const pipes = [...log.matchAll(/page-pipe: \* (\d+) pipes/g)].map((m) => Number(m[1]));
    assert.ok(pipes.length > 0, 'CRIU\'s -v4 log shows its page pipe');
    assert.ok(Math.max(...pipes) <= 3, `CRIU used ${Math.max(...pipes)} pipes for ${mib} MiB of lazy pages (lazy-pipeless: one for them all)`);
    const lazy = entries.filter((e) => (e.flags & PE_LAZY) && !(e.flags & PE_PRESENT));
    const whole = lazy.find((e) => e.vaddr <= buf && e.vaddr + e.nrPages * PAGE_SIZE >= buf + mib * 1024 * 1024);
    assert.ok(whole, `one lazy entry covers memwork's ${mib} MiB at 0x${buf.toString(16)}: ${JSON.stringify(lazy.map((e) => [e.vaddr.toString(16), e.nrPages]))}`);
    const c = code[0];
    const inCode = entries.filter((e) => e.vaddr < c.end && e.vaddr + e.nrPages * PAGE_SIZE > c.start);
    assert.deepEqual(inCode, [], `no page of ${c.file}'s code (file-backed, only read) is in the images`);
    await assertResumedIntact(w);
  } finally {
    await dump?.rollback();
    await w.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
