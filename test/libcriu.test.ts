// The addon's libcriu calls against the real CRIU: check and version, a real
// dump + restore of a small process tree in its own pid namespace (it must
// keep counting after the restore), clear one-line failures, the watchdog, and
// that a blocked CRIU call never blocks the event loop.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { criu, noCriu } from './helpers/criu';
import { criuCheck, criuDump, criuRestore, criuVersion } from '../src/criu/libcriu';
import { PhaulError } from '../src/errors';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function tmpDir(tag: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `phaul-libcriu-${tag}-`));
}

/** Alive and not a zombie. */
function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

async function waitFor<T>(what: string, ms: number, f: () => T | undefined | false): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

function readCount(file: string): number {
  try {
    return parseInt(fs.readFileSync(file, 'utf8'), 10) || 0;
  } catch {
    return 0;
  }
}

interface Counter { launcher: ChildProcess; init: number; countFile: string }

/**
 * A shell counting into a file, as init of its own pid namespace: CRIU can
 * restore it with the same pids right after the dump (the VM's init reaps the
 * dumped tree late, docs/DESIGN.md section 2). The inner setsid matters: CRIU
 * refuses a tree whose session leader is outside its pid namespace. The shell
 * reopens the file for every write, so no open file changes size under CRIU.
 */
async function startCounter(dir: string): Promise<Counter> {
  const countFile = path.join(dir, 'count');
  const script = `i=0; while :; do i=$((i+1)); echo $i > ${countFile}; sleep 0.02; done`;
  const launcher = spawn('setsid', ['unshare', '-pf', '--fork', 'setsid', 'sh', '-c', script], { stdio: 'ignore', cwd: dir });
  const up = launcher.pid!;
  // The dump target is the namespace's init: the child of the unshare process.
  const init = await waitFor('the namespace init', 5000, () => {
    try {
      const kids = fs.readFileSync(`/proc/${up}/task/${up}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
      return kids.length === 1 ? Number(kids[0]) : undefined;
    } catch {
      return undefined;
    }
  });
  await waitFor('the counter to run', 5000, () => readCount(countFile) > 2);
  return { launcher, init, countFile };
}

test('criuCheck and criuVersion talk to the real CRIU', { skip: noCriu || false }, async () => {
  await criuCheck();
  const v = await criuVersion();
  const cli = /^Version:\s*(\d+)\.(\d+)(?:\.(\d+))?/m.exec(execFileSync(criu!, ['--version'], { encoding: 'utf8' }));
  assert.ok(cli, 'criu --version prints a version');
  assert.deepEqual([v.major, v.minor, v.sublevel], [Number(cli[1]), Number(cli[2]), Number(cli[3] ?? 0)]);
  assert.ok(v.code >= 40100, `CRIU ${v.major}.${v.minor}.${v.sublevel} is older than 4.1, which this kernel needs`);
  // Calls share nothing: several at once all answer.
  const many = await Promise.all([criuVersion(), criuVersion(), criuCheck(), criuVersion()]);
  assert.deepEqual([many[0].code, many[1].code, many[3].code], [v.code, v.code, v.code]);
});

test('dump and restore a process tree in its own pid namespace; it keeps working', { skip: noCriu || false, timeout: 60_000 }, async () => {
  const dir = tmpDir('dr');
  const images = path.join(dir, 'img');
  fs.mkdirSync(images);
  const c = await startCounter(dir);
  let restored = 0;
  try {
    const launcherExit = new Promise((r) => c.launcher.once('exit', r));
    await criuDump({ pid: c.init, imagesDir: images, logFile: 'dump.log' });
    // The dump killed the tree (no leaveRunning): its init is gone, unshare exits.
    await waitFor('the dumped tree to die', 5000, () => !alive(c.init));
    await launcherExit;
    const atDump = readCount(c.countFile);
    await sleep(150);
    assert.equal(readCount(c.countFile), atDump, 'nothing counts between dump and restore');
    assert.ok(fs.existsSync(path.join(images, 'inventory.img')), 'the images are written');

    restored = await criuRestore({ imagesDir: images, logFile: 'restore.log', timeoutMs: 30_000 });
    assert.ok(Number.isInteger(restored) && restored > 0, `restore returned pid ${restored}`);
    assert.ok(alive(restored), 'the restored root is alive');
    assert.match(fs.readFileSync(`/proc/${restored}/cmdline`, 'utf8'), /while :; do/);
    // Still working: it counts on from where it was dumped.
    await waitFor('the restored counter to advance', 5000, () => readCount(c.countFile) >= atDump + 3);
    assert.ok(alive(restored), 'still alive after counting');
  } finally {
    // Only pids this test started: the restored init (SIGKILL takes its whole
    // namespace) and, if the dump failed, the original tree and its launcher.
    if (restored > 0) process.kill(restored, 'SIGKILL');
    if (alive(c.init)) process.kill(c.init, 'SIGKILL');
    if (c.launcher.exitCode === null) c.launcher.kill('SIGKILL');
  }
  await waitFor('the restored tree to die', 5000, () => !alive(restored));
  fs.rmSync(dir, { recursive: true, force: true });
});

test('leaveRunning keeps the tree counting; leaveStopped leaves it stopped', { skip: noCriu || false, timeout: 60_000 }, async () => {
  const dir = tmpDir('leave');
  const c = await startCounter(dir);
  const state = (pid: number) => { const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8'); return s.slice(s.lastIndexOf(')') + 2)[0]; };
  try {
    fs.mkdirSync(path.join(dir, 'a'));
    await criuDump({ pid: c.init, imagesDir: path.join(dir, 'a'), leaveRunning: true });
    const n = readCount(c.countFile);
    await waitFor('the counter to go on after a leaveRunning dump', 5000, () => readCount(c.countFile) >= n + 3);

    // leaveStopped has no libcriu setter: this proves the field reaches CRIU.
    fs.mkdirSync(path.join(dir, 'b'));
    await criuDump({ pid: c.init, imagesDir: path.join(dir, 'b'), leaveStopped: true });
    assert.equal(state(c.init), 'T', 'the root is stopped');
    const m = readCount(c.countFile);
    await sleep(200);
    assert.equal(readCount(c.countFile), m, 'nothing counts while stopped');
  } finally {
    if (alive(c.init)) process.kill(c.init, 'SIGKILL');
    if (c.launcher.exitCode === null) c.launcher.kill('SIGKILL');
  }
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a dump of a pid that does not exist rejects with one clear line', { skip: noCriu || false }, async () => {
  const pidMax = Number(fs.readFileSync('/proc/sys/kernel/pid_max', 'utf8'));
  let pid = pidMax - 1;
  while (fs.existsSync(`/proc/${pid}`)) pid--;
  const dir = tmpDir('bad');
  try {
    await assert.rejects(criuDump({ pid, imagesDir: dir }), (err: unknown) => {
      assert.ok(err instanceof PhaulError);
      assert.equal(err.code, 'notFound');
      assert.ok(!err.message.includes('\n'), `one line: ${err.message}`);
      assert.match(err.message, new RegExp(`criu dump of pid ${pid} failed`));
      assert.match(err.message, /No such process/);
      assert.match(err.message, /dump\.log: /, 'quotes CRIU\'s log');
      return true;
    });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a restore of an empty image directory rejects with CRIU\'s reason', { skip: noCriu || false }, async () => {
  const dir = tmpDir('empty');
  try {
    await assert.rejects(criuRestore({ imagesDir: dir }), (err: unknown) => {
      assert.ok(err instanceof PhaulError);
      assert.equal(err.code, 'criu');
      assert.ok(!err.message.includes('\n'));
      assert.match(err.message, /^criu restore failed: CRIU reported failure; .*restore\.log: ./);
      return true;
    });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('bad options are refused before CRIU runs', async () => {
  await assert.rejects(criuDump({ pid: 0, imagesDir: '/tmp' }), (e: unknown) => e instanceof PhaulError && e.code === 'usage');
  await assert.rejects(criuDump({ pid: 1, imagesDir: '/tmp', logFile: 'a/b.log', criuBinary: '/bin/true' }), /bare file name/);
  await assert.rejects(criuDump({ pid: 1, imagesDir: '/tmp', leaveRunning: true, leaveStopped: true, criuBinary: '/bin/true' }), /exclude each other/);
  await assert.rejects(criuDump({ pid: 1, imagesDir: '/nonexistent-dir', criuBinary: '/bin/true' }), /imagesDir \/nonexistent-dir: No such file/);
  await assert.rejects(criuVersion({ criuBinary: '/nonexistent/criu' }), /cannot run \/nonexistent\/criu swrk: No such file/);
});

test('a hung CRIU is killed by the watchdog while the event loop keeps running', async () => {
  // A stand-in "criu" that never answers: the call must not block node, and
  // timeoutMs must end it.
  const dir = tmpDir('hang');
  const fake = path.join(dir, 'criu');
  fs.writeFileSync(fake, '#!/bin/sh\nexec sleep 30\n', { mode: 0o755 });
  let ticks = 0;
  const iv = setInterval(() => ticks++, 10);
  const t0 = Date.now();
  try {
    await assert.rejects(criuRestore({ criuBinary: fake, imagesDir: dir, timeoutMs: 400 }), (err: unknown) => {
      assert.ok(err instanceof PhaulError);
      assert.match(err.message, /criu restore failed: timed out after 400 ms; criu and its children were killed/);
      assert.equal((err.cause as { timedOut?: boolean }).timedOut, true);
      return true;
    });
  } finally {
    clearInterval(iv);
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const took = Date.now() - t0;
  assert.ok(took >= 390 && took < 5000, `took ${took} ms`);
  assert.ok(ticks >= 15, `the event loop ran ${ticks} timer ticks during a 400 ms blocked call`);
});
