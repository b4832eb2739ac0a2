// `phaul-fast resolve SESSION` and the in-doubt path it serves, with real
// CRIU, processes and namespaces: migrate is SIGKILLed where it leaves its
// original stopped (CRIU let go: `held`; or `commit` sent: `committing`), and
// resolve, run on the source host, ends with exactly one running copy, every
// page verified, nothing left at the destination. The agents are stopped at
// those points by the test-only PHAUL_FAST_TEST_PAUSE hook (src/agent/test-pause.ts).
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { startMemWorkload } from '../src/testing/workload';
import { procState, sleep } from '../src/testing/proc';
import { readSourceRecord } from '../src/agent/source-record';
import { runCli, startServe, useTwoHostsWithServe } from './helpers/agents';
import { destinationClean, expectRunsAtDestination, expectRunsAtSource, startMigrate } from './helpers/faults';

const root = process.getuid?.() === 0;
const skip = root ? false : 'needs root (CRIU, network namespaces)';

const fx = useTwoHostsWithServe({ prefix: 'pfresolve', tag: 'resolve', enabled: root });

/** Runs migrate until the test pause at `point`, then SIGKILLs it (only it: CRIU has its own group). */
async function killMigrateAt(pid: number, point: string, extra: string[] = []): Promise<string> {
  const m = startMigrate(fx.hosts.a, pid, `${fx.hosts.b.addr}:${fx.serve.port}`, fx.token, ['--mode', 'stop-copy', ...extra],
    { PHAUL_FAST_TEST_PAUSE: `source:${point}` });
  await m.waitFor(new RegExp(`test pause: source at ${point}`));
  const session = m.session();
  m.proc.kill('SIGKILL');
  await m.done;
  return session;
}

function resolve(session: string, extra: string[] = []) {
  return runCli(fx.hosts.a, ['resolve', session, '--token-file', fx.token, '--json', ...extra]);
}

test('migrate killed after CRIU let go (held): resolve commits the stopped copy and kills the original', { skip }, async () => {
  const w = await startMemWorkload({ mib: 64, writeMBps: 10, netns: fx.hosts.a.netnsPath! });
  try {
    const session = await killMigrateAt(w.pid, 'held', ['--freeze-timeout', '120']);
    assert.equal(procState(w.pid), 'T', 'the original is left stopped by the dead migrate');
    assert.equal(readSourceRecord(session)?.state, 'held', 'the source recorded the session');
    const listed = await runCli(fx.hosts.a, ['resolve', '--list', '--json']);
    assert.ok(listed.json?.sessions.some((s: { session: string }) => s.session === session), listed.stdout);
    const r = await resolve(session);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json?.outcome, 'moved', r.stdout);
    assert.equal(r.json?.destination, 'stopped');
    await expectRunsAtDestination(w, r.json!.pid);
    assert.equal(readSourceRecord(session), undefined, 'the record is gone once resolved');
    await destinationClean(fx.serve.dir);
    // Asked again (the record is gone), the destination remembers: the copy runs there.
    const again = await resolve(session, ['--to', `${fx.hosts.b.addr}:${fx.serve.port}`]);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(again.json?.destination, 'running', again.stdout);
    assert.equal(again.json?.pid, r.json!.pid);
  } finally {
    await w.stop();
  }
});

test('migrate killed in held, the destination gave up on its copy: resolve resumes the original', { skip }, async () => {
  const w = await startMemWorkload({ mib: 64, writeMBps: 10, netns: fx.hosts.a.netnsPath! });
  try {
    // A budget the dump and restore fit in on a loaded machine; the destination waits that long
    // (from its restore) for a decision, then discards the copy that never ran.
    const session = await killMigrateAt(w.pid, 'held', ['--freeze-timeout', '10']);
    const end = Date.now() + 60_000;
    while (!/nobody resolved session/.test(fx.serve.stderr()) && Date.now() < end) await sleep(100);
    await destinationClean(fx.serve.dir);
    assert.equal(procState(w.pid), 'T', 'the original is still stopped');
    const r = await resolve(session);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json?.outcome, 'rolled-back', r.stdout);
    assert.equal(r.json?.destination, 'aborted');
    await expectRunsAtSource(w);
  } finally {
    await w.stop();
  }
});

test('migrate killed after sending commit: resolve finds the copy running and kills the original', { skip }, async () => {
  const w = await startMemWorkload({ mib: 64, writeMBps: 10, netns: fx.hosts.a.netnsPath! });
  try {
    const session = await killMigrateAt(w.pid, 'committing');
    // The destination got the commit (sent before the pause) and resumed its copy.
    const end = Date.now() + 30_000;
    while (!/running as pid/.test(fx.serve.stderr()) && Date.now() < end) await sleep(100);
    assert.equal(procState(w.pid), 'T', 'the original is left stopped');
    const r = await resolve(session);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json?.outcome, 'moved', r.stdout);
    assert.equal(r.json?.destination, 'running');
    await expectRunsAtDestination(w, r.json!.pid);
    await destinationClean(fx.serve.dir);
  } finally {
    await w.stop();
  }
});

test('the destination agent dies right after resuming its copy: migrate asks again, and a new agent still answers', { skip }, async () => {
  const w = await startMemWorkload({ mib: 64, writeMBps: 10, netns: fx.hosts.a.netnsPath! });
  const dir = path.join(fx.dir, 'dest-commit');
  let serve = await startServe(fx.hosts.b, fx.token, dir, [], { PHAUL_FAST_TEST_PAUSE: 'destination:running' });
  try {
    const m = startMigrate(fx.hosts.a, w.pid, `${fx.hosts.b.addr}:${serve.port}`, fx.token, ['--mode', 'stop-copy', '--freeze-timeout', '5']);
    const end = Date.now() + 120_000;
    while (!/test pause: destination at running/.test(serve.stderr()) && Date.now() < end) await sleep(20);
    await serve.stop('SIGKILL');
    const res = await m.done;
    // Nobody answers within the budget: in doubt, and the message says how to settle it.
    assert.equal(res.code, 10, res.stderr);
    assert.equal(res.json?.rolledBack, false);
    const session = m.session();
    assert.match(res.json?.error?.message ?? '', new RegExp(`phaul-fast resolve ${session} --token-file`));
    assert.equal(procState(w.pid), 'T', 'the original is left stopped');
    // A new agent on the same --dir finds the commit on record.
    serve = await startServe(fx.hosts.b, fx.token, dir);
    const r = await runCli(fx.hosts.a, ['resolve', session, '--token-file', fx.token, '--json', '--to', `${fx.hosts.b.addr}:${serve.port}`]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json?.outcome, 'moved', r.stdout);
    await expectRunsAtDestination(w, r.json!.pid);
    await destinationClean(dir);
  } finally {
    await serve.stop();
    await w.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
