// Faults during a migration, with real CRIU, processes and namespaces: an
// interrupt (SIGINT/SIGTERM on migrate) and a network partition (nftables in
// the destination's namespace) while the workload is frozen. Each ends with the
// workload running exactly once, at the source, every page verified, and the
// error saying what happened. docs/SECURITY.md lists the whole matrix.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { runIn, spawnIn } from '../src/testing/hosts';
import { MemWorkload, startMemWorkload } from '../src/testing/workload';
import { isAlive, procState, sleep } from '../src/testing/proc';
import { CLI, useTwoHostsWithServe } from './helpers/agents';

const root = process.getuid?.() === 0;
const skip = root ? false : 'needs root (CRIU, network namespaces, nftables)';

const fx = useTwoHostsWithServe({ prefix: 'pffault', tag: 'faults', enabled: root });

interface Running {
  /** Resolves with the exit code, stderr and the JSON report. */
  done: Promise<{ code: number; stderr: string; json?: Record<string, any>; ms: number }>;
  /** Resolves once stderr matches re. */
  waitFor(re: RegExp, timeoutMs?: number): Promise<void>;
  /** Signals migrate's whole process group, as a Ctrl-C at a terminal does. */
  signalGroup(sig: NodeJS.Signals): void;
}

/** Starts `phaul-fast migrate` in host a in its own process group. */
function startMigrate(pid: number, extra: string[]): Running {
  const t0 = Date.now();
  const p = spawnIn(fx.hosts.a, [process.execPath, CLI, 'migrate', '--pid', String(pid), '--to', `${fx.hosts.b.addr}:${fx.serve.port}`,
    '--token-file', fx.token, '--json', ...extra], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let out = '';
  let err = '';
  p.stdout!.on('data', (d) => { out += d; });
  p.stderr!.on('data', (d) => { err += d; });
  const done = new Promise<{ code: number; stderr: string; json?: Record<string, any>; ms: number }>((resolve) => {
    p.on('close', (code, sig) => {
      let json: Record<string, any> | undefined;
      try { json = JSON.parse(out.trim().split('\n').pop() ?? ''); } catch { /* none */ }
      resolve({ code: code ?? (sig ? 128 : -1), stderr: err, json, ms: Date.now() - t0 });
    });
  });
  return {
    done,
    async waitFor(re, timeoutMs = 120_000) {
      const end = Date.now() + timeoutMs;
      while (!re.test(err)) {
        if (p.exitCode !== null || Date.now() > end) throw new Error(`migrate never printed ${re}: ${err}`);
        await sleep(20);
      }
    },
    signalGroup(sig) {
      process.kill(-p.pid!, sig);
    },
  };
}

async function expectRunsAtSource(w: MemWorkload): Promise<void> {
  assert.ok(isAlive(w.pid), 'the original is alive');
  // CRIU lets go of the tree as it fails; give it a moment to be running again.
  for (let i = 0; i < 50 && procState(w.pid) === 'T'; i++) await sleep(100);
  assert.notEqual(procState(w.pid), 'T', 'the original is not left stopped');
  const r = await w.report();
  assert.equal(r.ok, true, `the original verifies all its memory: ${JSON.stringify(r)}`);
  assert.equal(r.badPages, 0);
}

/** The destination ended the session and removed what it held. */
async function destinationClean(): Promise<void> {
  const end = Date.now() + 90_000;
  while (fs.readdirSync(fx.serve.dir).length && Date.now() < end) await sleep(200);
  assert.deepEqual(fs.readdirSync(fx.serve.dir), [], 'the destination removed the session');
}

/** cpu.max of pid's cgroup (v2), or 'max' where there is none. */
function cpuMax(pid: number): string {
  const line = fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n').find((l) => l.startsWith('0::'));
  try {
    return fs.readFileSync(`/sys/fs/cgroup${line!.slice(3)}/cpu.max`, 'utf8').trim();
  } catch {
    return 'max';
  }
}

async function nft(host: 'a' | 'b', script: string): Promise<void> {
  const r = await runIn(fx.hosts[host], ['nft', '-f', '-'], { input: script });
  assert.equal(r.code, 0, r.stderr);
}

test('SIGINT on migrate during pre-copy rounds with the throttle on: rolled back, throttle released', { skip }, async () => {
  const w = await startMemWorkload({ mib: 128, writeMBps: 200, netns: fx.hosts.a.netnsPath! });
  try {
    // A slow cap and a fast writer: rounds go on and auto-converge throttles.
    const m = startMigrate(w.pid, ['--mode', 'precopy', '--max-bandwidth', String(4 << 20), '--auto-converge', '--max-rounds', '1000']);
    await m.waitFor(/throttle\s+[1-9]\d*%/);
    m.signalGroup('SIGINT');
    const r = await m.done;
    if (r.json?.restoredPid) w.adopt(r.json.restoredPid); // a failure of the test must leave no copy behind
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.json?.rolledBack, true);
    assert.match(r.json?.error?.message ?? '', /interrupted by SIGINT/);
    await expectRunsAtSource(w);
    assert.match(cpuMax(w.pid), /^max\b/, 'no CPU quota is left on the workload\'s cgroup');
    await destinationClean();
  } finally {
    await w.stop();
  }
});

test('SIGTERM on migrate while the workload is frozen in stop-copy: CRIU resumes it', { skip }, async () => {
  const w = await startMemWorkload({ mib: 256, writeMBps: 10, netns: fx.hosts.a.netnsPath! });
  await fx.hosts.shape(100); // ~12 MB/s: the dump takes ~20 s
  try {
    const m = startMigrate(w.pid, ['--mode', 'stop-copy']);
    await m.waitFor(/criu-start/);
    await sleep(1000);
    m.signalGroup('SIGTERM');
    const r = await m.done;
    if (r.json?.restoredPid) w.adopt(r.json.restoredPid); // a failure of the test must leave no copy behind
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.json?.rolledBack, true);
    assert.match(r.json?.error?.message ?? '', /interrupted by SIGTERM/);
    await expectRunsAtSource(w);
    await destinationClean();
  } finally {
    await fx.hosts.shape(null);
    await w.stop();
  }
});

test('a partition while the workload is frozen in stop-copy gives it back at the source within the freeze budget', { skip }, async () => {
  const w = await startMemWorkload({ mib: 256, writeMBps: 10, netns: fx.hosts.a.netnsPath! });
  await fx.hosts.shape(100);
  try {
    const m = startMigrate(w.pid, ['--mode', 'stop-copy', '--freeze-timeout', '10']);
    await m.waitFor(/criu-start/);
    const frozenAt = Date.now();
    // The destination drops everything from the source from now on.
    await nft('b', `table inet pftest {\n  chain in {\n    type filter hook input priority -10; policy accept;\n    ip saddr ${fx.hosts.a.addr} drop\n  }\n}\n`);
    const r = await m.done;
    if (r.json?.restoredPid) w.adopt(r.json.restoredPid); // a failure of the test must leave no copy behind
    const frozenMs = Date.now() - frozenAt;
    process.stdout.write(`# partition: migrate ended ${frozenMs} ms after the freeze (--freeze-timeout 10)\n`);
    assert.notEqual(r.code, 0, r.stderr);
    assert.equal(r.json?.rolledBack, true, r.stderr);
    assert.match(r.json?.error?.message ?? '', /frozen for 10 s/);
    // The deadline is the point of the test: 10 s budget, and the bound of 45 s.
    assert.ok(frozenMs < 45_000, `the workload was given back after ${frozenMs} ms`);
    await expectRunsAtSource(w);
  } finally {
    await runIn(fx.hosts.b, ['nft', 'delete', 'table', 'inet', 'pftest']);
    await fx.hosts.shape(null);
    await w.stop();
  }
  await destinationClean();
});
