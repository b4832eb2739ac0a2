// Faults that roll back a `--tcp-established` migration (issue 13): CRIU
// locks the tree's network for its dump (an nftables table CRIU-* in the
// tree's network namespace, its TCP sockets in repair mode) and keeps the
// lock once the dump succeeded. Whoever resumes the original, migrate's own
// rollback or `phaul-fast resolve`, must lift it first: afterwards no CRIU
// table is left in the tree's namespace and the served connection carries
// data again; the destination's copy is gone (the workload runs once).
// Real CRIU, a real TCP connection (build/workloads/tcpwork), real namespaces.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { isAlive, procState, runCmd, sleep } from '../src/testing/proc';
import { readSourceRecord } from '../src/agent/source-record';
import { runCli, startServe, useTwoHostsWithServe } from './helpers/agents';
import { destinationClean, startMigrate } from './helpers/faults';
import { askTcp, startTcpWork } from './helpers/tcpwork';

const root = process.getuid?.() === 0;
const skip = root ? false : 'needs root (CRIU, network namespaces, nftables)';

const fx = useTwoHostsWithServe({ prefix: 'pftcpf', tag: 'tcpfault', enabled: root });

/** The nftables tables CRIU left in pid's network namespace. */
async function criuTables(pid: number): Promise<string[]> {
  const r = await runCmd(['nsenter', `--net=/proc/${pid}/ns/net`, 'nft', 'list', 'tables']);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout.split('\n').filter((l) => /CRIU-/.test(l));
}

/** The original runs again, unlocked: no CRIU table, and its connection carries data. */
async function expectConnectionKept(pid: number, report: string): Promise<void> {
  for (let i = 0; i < 50 && procState(pid) === 'T'; i++) await sleep(100);
  assert.notEqual(procState(pid), 'T', 'the original is not left stopped');
  assert.deepEqual(await criuTables(pid), [], "CRIU's lock table is lifted");
  const before = await askTcp(pid, report, () => fx.serve.stderr().trim().split('\n').slice(-4).join(' | '));
  await sleep(500);
  const after = await askTcp(pid, report);
  assert.equal(after.ok, true, JSON.stringify(after));
  assert.equal(after.serverAlive, true);
  assert.ok(after.exchanged > before.exchanged, `the connection carries data again (sockets out of repair mode): ${JSON.stringify(after)}`);
}

test('--tcp-established, the destination agent killed while it restores: migrate rolls back, lifts the lock, the connection lives on', { skip }, async () => {
  const report = path.join(fx.dir, 'tcp-restore.json');
  const tcp = await startTcpWork(fx.hosts.a.netnsPath!, report);
  // An agent of our own, stopped at the restore by the test-only pause hook, then killed.
  const release = path.join(fx.dir, 'release-restore');
  const own = await startServe(fx.hosts.b, fx.token, path.join(fx.dir, 'dest-restore'), [],
    { PHAUL_FAST_TEST_PAUSE: `destination:restoring:${release}` });
  try {
    const m = startMigrate(fx.hosts.a, tcp.pid, `${fx.hosts.b.addr}:${own.port}`, fx.token, ['--mode', 'stop-copy', '--tcp-established']);
    const end = Date.now() + 120_000;
    while (!/test pause: destination at restoring/.test(own.stderr())) {
      assert.ok(Date.now() < end && m.proc.exitCode === null, `never reached the restore: ${m.stderr()}\n${own.stderr()}`);
      await sleep(20);
    }
    await own.stop('SIGKILL');
    const r = await m.done;
    assert.equal(r.code, 6, r.stderr);
    assert.match(r.stderr, /network lock: \d+ CRIU lock table\(s\) removed/, 'migrate saw to the lock itself');
    await expectConnectionKept(tcp.pid, report);
  } finally {
    await own.stop('SIGKILL');
    for (const p of [tcp.pid, tcp.ns.child.pid ?? -1]) if (p > 0 && isAlive(p)) process.kill(p, 'SIGKILL');
  }
});

test('--tcp-established, migrate killed after CRIU let go, the destination gave up: resolve lifts the lock and resumes the original', { skip }, async () => {
  const report = path.join(fx.dir, 'tcp-held.json');
  const tcp = await startTcpWork(fx.hosts.a.netnsPath!, report);
  try {
    const m = startMigrate(fx.hosts.a, tcp.pid, `${fx.hosts.b.addr}:${fx.serve.port}`, fx.token,
      ['--mode', 'stop-copy', '--tcp-established', '--freeze-timeout', '10'], { PHAUL_FAST_TEST_PAUSE: 'source:held' });
    await m.waitFor(/test pause: source at held/);
    const session = m.session();
    m.proc.kill('SIGKILL');
    await m.done;
    assert.deepEqual(readSourceRecord(session)?.networkLock, {}, 'the record says CRIU locked the network (in the tree\'s namespace)');
    // The destination discards its stopped copy once nobody decided within the budget.
    const end = Date.now() + 60_000;
    while (!/nobody resolved session/.test(fx.serve.stderr()) && Date.now() < end) await sleep(100);
    await destinationClean(fx.serve.dir);
    assert.equal(procState(tcp.pid), 'T', 'the original is still stopped');
    assert.notDeepEqual(await criuTables(tcp.pid), [], "CRIU's lock is still there (what resolve must lift)");
    const r = await runCli(fx.hosts.a, ['resolve', session, '--token-file', fx.token, '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json?.outcome, 'rolled-back', r.stdout);
    assert.match(r.json?.detail, /network lock: [1-9]\d* CRIU lock table\(s\) removed, [1-9]\d* of \d+ TCP socket\(s\) out of repair mode/);
    await expectConnectionKept(tcp.pid, report);
  } finally {
    for (const p of [tcp.pid, tcp.ns.child.pid ?? -1]) if (p > 0 && isAlive(p)) process.kill(p, 'SIGKILL');
  }
});
