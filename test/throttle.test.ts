// Workload throttle against a real busy loop (root): `sh -c 'while :; do :; done'`
// as the init of its own pid namespace, under `unshare`. Checks its CPU time
// with and without a throttle (a behavior check with generous margins, not a
// benchmark), and that release() — also on a crash — leaves it running.
// Only the pids these tests start are ever signalled.
//
// Run alone:  node --test dist/test/throttle.test.js
import * as assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';

import { PhaulError } from '../src/errors';
import { WorkloadThrottle } from '../src/agent/throttle';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const THROTTLE_JS = path.join(__dirname, '..', 'src', 'agent', 'throttle.js');

function stat(pid: number): string[] | null {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return s.slice(s.lastIndexOf(')') + 2).split(' ');
  } catch {
    return null;
  }
}
const state = (pid: number) => stat(pid)?.[0] ?? null;
/** utime + stime, seconds. */
const cpu = (pid: number) => { const f = stat(pid); return f ? (Number(f[11]) + Number(f[12])) / 100 : NaN; };

/** CPUs used by pid over the next ms. */
async function rate(pid: number, ms: number): Promise<number> {
  const c0 = cpu(pid);
  const t0 = performance.now();
  await sleep(ms);
  return (cpu(pid) - c0) / ((performance.now() - t0) / 1000);
}

/** Never in T (stopped) over ms, sampled every 10 ms. */
async function neverStopped(pids: number[], ms: number): Promise<void> {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    for (const p of pids) assert.notEqual(state(p), 'T', `pid ${p} is stopped`);
    await sleep(10);
  }
}

interface Busy { root: number; sh: number; proc: ChildProcess; stop(): Promise<void> }

/** unshare (root of the tree) -> sh busy loop (pid 1 of a new pid namespace). */
async function startBusy(): Promise<Busy> {
  const proc = spawn('setsid', ['unshare', '-pf', '--fork', 'setsid', 'sh', '-c', 'while :; do :; done'], { stdio: 'ignore' });
  const root = proc.pid!;
  let sh = 0;
  for (let i = 0; i < 200 && !sh; i++) {
    await sleep(10);
    for (const c of fs.readFileSync(`/proc/${root}/task/${root}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number)) {
      if (fs.readFileSync(`/proc/${c}/comm`, 'utf8').trim() === 'sh') sh = c;
    }
  }
  assert.ok(sh > 0, 'busy loop did not start');
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  return {
    root, sh, proc,
    async stop() {
      // Resume first, in case a failed assertion left it stopped; killing the
      // namespace's init ends the namespace, and unshare then exits.
      for (const p of [sh, root]) try { process.kill(p, 'SIGCONT'); } catch { /* gone */ }
      try { process.kill(sh, 'SIGKILL'); } catch { /* gone */ }
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      await exited;
    },
  };
}

test('duty cycle: 50% and 80% throttle a busy loop; release() leaves it running', async () => {
  const w = await startBusy();
  try {
    await sleep(100);
    const free = await rate(w.sh, 1000);
    assert.ok(free > 0.3, `the busy loop got only ${free.toFixed(2)} CPU unthrottled`);
    const t = new WorkloadThrottle(w.root, { method: 'signals' });
    t.set(50);
    assert.equal(t.method, 'signals');
    assert.equal(t.pct, 50);
    await sleep(100);
    const half = await rate(w.sh, 1000);
    t.set(80);
    await sleep(100);
    const fifth = await rate(w.sh, 1000);
    t.release();
    assert.equal(t.pct, 0);
    assert.equal(t.method, null);
    await neverStopped([w.root, w.sh], 400);
    const after = await rate(w.sh, 600);
    t.release(); // idempotent
    process.stdout.write(`# throttle (signals): free ${free.toFixed(2)} CPU, 50% -> ${half.toFixed(2)}, 80% -> ${fifth.toFixed(2)}, released ${after.toFixed(2)}\n`);
    assert.ok(half < 0.7 * free && half > 0.15 * free, `50%: ${half.toFixed(2)} of ${free.toFixed(2)}`);
    assert.ok(fifth < 0.4 * free, `80%: ${fifth.toFixed(2)} of ${free.toFixed(2)}`);
    assert.ok(after > 0.5 * free, `after release: ${after.toFixed(2)} of ${free.toFixed(2)}`);
  } finally {
    await w.stop();
  }
});

test('auto: a tree that shares its cgroup is throttled with signals, and says why', async () => {
  const w = await startBusy();
  try {
    // The test's own processes share the workload's cgroup (or it is a root cgroup).
    const t = new WorkloadThrottle(w.root);
    t.set(30);
    assert.equal(t.method, 'signals');
    assert.match(t.detail, /no cgroup quota: /);
    t.release();
    await neverStopped([w.root, w.sh], 200);
    assert.throws(() => { new WorkloadThrottle(w.root, { method: 'cgroup' }).set(30); }, (e: unknown) => e instanceof PhaulError && e.code === 'unavailable');
  } finally {
    await w.stop();
  }
});

test('bad input: pct out of range, dead root, silly period', async () => {
  const w = await startBusy();
  const t = new WorkloadThrottle(w.root, { method: 'signals' });
  for (const bad of [100, -1, 1.5, NaN]) assert.throws(() => t.set(bad), (e: unknown) => e instanceof PhaulError && e.code === 'usage');
  assert.equal(t.method, null);
  await w.stop();
  assert.throws(() => new WorkloadThrottle(w.root).set(20), (e: unknown) => e instanceof PhaulError && e.code === 'notFound');
  assert.throws(() => new WorkloadThrottle(1, { periodMs: 1 }), /period/);
  t.set(0); // release of something never set: fine
});

test('a crash with the tree stopped still resumes it (exit hook)', async () => {
  const w = await startBusy();
  try {
    // set() stops the tree at once (the first stopped phase), then the script throws.
    const script = `const { WorkloadThrottle } = require(${JSON.stringify(THROTTLE_JS)});
      new WorkloadThrottle(${w.root}, { method: 'signals' }).set(95);
      const st = () => { const s = require('fs').readFileSync('/proc/${w.sh}/stat', 'utf8'); return s[s.lastIndexOf(')') + 2]; };
      const end = Date.now() + 2000;
      while (st() !== 'T') if (Date.now() > end) process.exit(4); // SIGSTOP lands asynchronously
      throw new Error('boom');`;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 10_000 });
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /boom/);
    await neverStopped([w.root, w.sh], 300);
  } finally {
    await w.stop();
  }
});

// ------------------------------------------------------------ cgroup quota
interface TestCgroup { dir: string; v2: boolean; file: string; remove(): Promise<void> }

/** A cgroup of our own with a CPU quota knob: v2 if its cpu controller is on at the root, else v1 cpu. */
function makeCgroup(): TestCgroup | string {
  const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => {
    const [pre, post] = l.split(' - ');
    return post ? { dir: pre.split(' ')[4], type: post.split(' ')[0], opts: post.split(' ')[2] ?? '' } : null;
  }).filter((m) => m !== null);
  const v2 = mounts.find((m) => m.type === 'cgroup2' && fs.readFileSync(path.join(m.dir, 'cgroup.subtree_control'), 'utf8').split(/\s+/).includes('cpu'));
  const v1 = mounts.find((m) => m.type === 'cgroup' && m.opts.split(',').includes('cpu'));
  const m = v2 ?? v1;
  if (!m) return 'no cgroup hierarchy with the cpu controller';
  const dir = path.join(m.dir, `phaul-throttle-test-${process.pid}`);
  try {
    fs.mkdirSync(dir);
  } catch (err) {
    return `cannot create ${dir}: ${(err as NodeJS.ErrnoException).code}`;
  }
  return {
    dir, v2: !!v2, file: path.join(dir, v2 ? 'cpu.max' : 'cpu.cfs_quota_us'),
    async remove() {
      for (let i = 0; i < 100; i++) {
        try { fs.rmdirSync(dir); return; } catch { await sleep(20); } // busy until its processes are reaped
      }
      throw new Error(`cannot remove ${dir}`);
    },
  };
}

test('cgroup quota: used when the tree has its own cgroup; restored on release and on a crash', async (t) => {
  const cg = makeCgroup();
  if (typeof cg === 'string') { t.skip(cg); return; }
  const w = await startBusy();
  let extra: ChildProcess | undefined;
  try {
    for (const p of [w.root, w.sh]) fs.writeFileSync(path.join(cg.dir, 'cgroup.procs'), String(p));
    const orig = fs.readFileSync(cg.file, 'utf8').trim();
    const th = new WorkloadThrottle(w.root);
    const free = await rate(w.sh, 1000); // also the window the quota is sized from
    th.set(50);
    assert.equal(th.method, 'cgroup');
    assert.equal(th.detail, `cgroup quota ${cg.file}`);
    const quota = Number(fs.readFileSync(cg.file, 'utf8').trim().split(' ')[0]);
    // Half of what it used (about one CPU) per 100 ms period.
    assert.ok(quota > 0.35 * free * 100_000 && quota < 0.65 * free * 100_000, `quota ${quota} us for ${free.toFixed(2)} CPU`);
    await sleep(200);
    const half = await rate(w.sh, 1000);
    th.set(80);
    const q80 = Number(fs.readFileSync(cg.file, 'utf8').trim().split(' ')[0]);
    assert.ok(Math.abs(q80 / quota - 0.4) < 0.02, `80% quota ${q80} vs 50% ${quota}`); // same baseline
    th.release();
    assert.equal(fs.readFileSync(cg.file, 'utf8').trim(), orig);
    th.release();
    process.stdout.write(`# throttle (cgroup ${cg.v2 ? 'v2' : 'v1'}): free ${free.toFixed(2)} CPU, 50% -> ${half.toFixed(2)} (quota ${quota} us)\n`);
    assert.ok(half < 0.7 * free && half > 0.2 * free, `50%: ${half.toFixed(2)} of ${free.toFixed(2)}`);

    // A crash while the quota is set: the exit hook restores it.
    const script = `const { WorkloadThrottle } = require(${JSON.stringify(THROTTLE_JS)});
      const t = new WorkloadThrottle(${w.root}); t.set(90);
      if (t.method !== 'cgroup') process.exit(3);
      throw new Error('boom');`;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 10_000 });
    assert.equal(r.status, 1, r.stderr);
    assert.equal(fs.readFileSync(cg.file, 'utf8').trim(), orig);

    // One more process in the cgroup, outside the tree: not safe, signals instead.
    extra = spawn('sleep', ['30'], { stdio: 'ignore' });
    fs.writeFileSync(path.join(cg.dir, 'cgroup.procs'), String(extra.pid));
    const th2 = new WorkloadThrottle(w.root);
    th2.set(30);
    assert.equal(th2.method, 'signals');
    assert.match(th2.detail, /holds 3 processes, the tree 2/);
    th2.release();
    assert.equal(fs.readFileSync(cg.file, 'utf8').trim(), orig);
    await neverStopped([w.root, w.sh], 200);
  } finally {
    if (extra) {
      const gone = new Promise((r) => extra!.once('exit', r));
      extra.kill('SIGKILL');
      await gone;
    }
    await w.stop();
    await cg.remove();
  }
});
