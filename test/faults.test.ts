// Faults during a migration, with real CRIU, processes and namespaces: an
// interrupt (SIGINT/SIGTERM on migrate) and a network partition (nftables in
// the destination's namespace) while the workload is frozen. Each ends with the
// workload running exactly once, at the source, every page verified, and the
// error saying what happened. docs/SECURITY.md lists the whole matrix.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { runIn } from '../src/testing/hosts';
import { startMemWorkload } from '../src/testing/workload';
import { sleep } from '../src/testing/proc';
import { useTwoHostsWithServe } from './helpers/agents';
import { destinationClean as destinationCleanAt, expectRunsAtSource, nft, startMigrate } from './helpers/faults';

const root = process.getuid?.() === 0;
const skip = root ? false : 'needs root (CRIU, network namespaces, nftables)';

const fx = useTwoHostsWithServe({ prefix: 'pffault', tag: 'faults', enabled: root });

function startMigrateA(pid: number, extra: string[]) {
  return startMigrate(fx.hosts.a, pid, `${fx.hosts.b.addr}:${fx.serve.port}`, fx.token, extra);
}

const destinationClean = () => destinationCleanAt(fx.serve.dir);

/** cpu.max of pid's cgroup (v2), or 'max' where there is none. */
function cpuMax(pid: number): string {
  const line = fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n').find((l) => l.startsWith('0::'));
  try {
    return fs.readFileSync(`/sys/fs/cgroup${line!.slice(3)}/cpu.max`, 'utf8').trim();
  } catch {
    return 'max';
  }
}

test('SIGINT on migrate during pre-copy rounds with the throttle on: rolled back, throttle released', { skip }, async () => {
  const w = await startMemWorkload({ mib: 128, writeMBps: 200, netns: fx.hosts.a.netnsPath! });
  try {
    // A slow cap and a fast writer: rounds go on and auto-converge throttles.
    const m = startMigrateA(w.pid, ['--mode', 'precopy', '--max-bandwidth', String(4 << 20), '--auto-converge', '--max-rounds', '1000']);
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
    const m = startMigrateA(w.pid, ['--mode', 'stop-copy']);
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
    const m = startMigrateA(w.pid, ['--mode', 'stop-copy', '--freeze-timeout', '10']);
    await m.waitFor(/criu-start/);
    const frozenAt = Date.now();
    // The destination drops everything from the source from now on.
    await nft(fx.hosts.b, `table inet pftest {\n  chain in {\n    type filter hook input priority -10; policy accept;\n    ip saddr ${fx.hosts.a.addr} drop\n  }\n}\n`);
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
