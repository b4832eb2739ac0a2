// Postcopy end to end, with real CRIU, real processes and two network
// namespaces as two hosts: the workload resumes at the destination before
// any of its memory is there, its pages come from the source (faults first),
// and it proves afterwards that no page was lost. When the source dies
// mid-fill the destination's copy is stopped, never run on missing memory;
// a failure before the copy runs resumes the original.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { startInPidNamespace, startMemWorkload } from '../src/testing/workload';
import { isAlive, listening, procState, processesMentioning, sleep, waitGone, until } from '../src/testing/proc';
import { spawnIn } from '../src/testing/hosts';
import { PACKAGE_ROOT } from '../src/package-root';
import { CLI, netnsOf, netnsOfPath, runCli, startServe, useTwoHostsWithServe } from './helpers/agents';

const root = process.getuid?.() === 0;
const skip = root ? false : 'needs root (CRIU, ptrace, userfaultfd, network namespaces)';

const fx = useTwoHostsWithServe({ prefix: 'pfpost', tag: 'postcopy', enabled: root });

function postcopyArgs(pid: number, port = fx.serve.port): string[] {
  return ['migrate', '--pid', String(pid), '--to', `${fx.hosts.b.addr}:${port}`, '--token-file', fx.token,
    '--mode', 'postcopy', '--json'];
}

/** Live lazy-pages servers of this checkout in this test's two hosts (other checkouts run their own). */
function ourFillServers(): number[] {
  const script = path.join(PACKAGE_ROOT, 'dist', 'src', 'transport', 'lazy-fill-process.js');
  const netns = (f: string) => { try { return fs.statSync(f).ino; } catch { return -1; } };
  const ours = new Set([fx.hosts.a.netnsPath!, fx.hosts.b.netnsPath!].map(netns));
  return fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p)).map(Number).filter((p) => {
    try {
      return fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(script) && procState(p) !== 'Z' && ours.has(netns(`/proc/${p}/ns/net`));
    } catch { return false; }
  });
}

/** The pid of our destination agent (stores are named after it; other checkouts run their own agents). */
function servePid(dir = fx.serve.dir): number {
  const me = fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p)).find((p) => {
    try {
      const argv = fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0');
      return argv.includes('serve') && argv.includes(dir);
    } catch { return false; }
  });
  assert.ok(me, 'our destination agent runs');
  return Number(me);
}

/** Our destination agent's page stores that hold a postcopy pages file. */
function stores(): string[] {
  const prefix = `phaul-fast-store-${servePid()}-`;
  return fs.readdirSync('/dev/shm').filter((n) => n.startsWith(prefix)).map((n) => path.join('/dev/shm', n))
    .filter((d) => { try { return fs.readdirSync(d).includes('postcopy.pages'); } catch { return false; } });
}

test('postcopy moves a 1 GiB workload: it resumes before its memory arrives, every page verifies, nothing is left behind', { skip }, async (t) => {
  const w = await startMemWorkload({ mib: 1024, writeMBps: 20, threads: 2, netns: fx.hosts.a.netnsPath! });
  let restored = 0;
  const logBefore = fx.serve.stderr().length;
  try {
    await w.resetGap();
    const r = await runCli(fx.hosts.a, postcopyArgs(w.pid), 300_000); // a bound for a loaded machine, not a timing
    assert.equal(r.code, 0, r.stderr);
    const rep = r.json!;
    assert.equal(rep.mode, 'postcopy');
    assert.equal(rep.rounds, undefined, 'no pre-copy round');
    assert.equal(rep.warning, undefined);
    restored = rep.restoredPid;
    w.adopt(restored);
    assert.equal(typeof rep.filledMs, 'number');
    assert.ok(rep.filledMs >= rep.downtimeMs, `filled ${rep.filledMs} ms, downtime ${rep.downtimeMs} ms`);
    assert.ok(rep.bytesSent >= 1024 * 2 ** 20, `the memory went over the wire: ${rep.bytesSent} bytes`);
    const fill = rep.fill;
    t.diagnostic(JSON.stringify({ downtimeMs: rep.downtimeMs, filledMs: rep.filledMs, phases: rep.phases, fill }));
    assert.ok(fill && fill.pages >= 1024 * 256, JSON.stringify(fill));
    assert.equal(fill.copiedPages + fill.droppedPages, fill.pages, JSON.stringify(fill));
    // The workload ran while its memory was on its way: some faults waited for pages asked of the source.
    assert.ok(fill.waitedFaults > 0 && fill.needs > 0, JSON.stringify(fill));
    assert.equal(fill.presentBytes, fill.pages * 4096, 'every page arrived once');
    assert.match(fx.serve.stderr().slice(logBefore), /memory filled \d+ ms after the restore began/);
    assert.ok(await waitGone(w.pid, 5000), 'the original is gone once its memory is at the destination');
    assert.equal(netnsOf(restored), netnsOfPath(fx.hosts.b.netnsPath!));
    const after = await w.report(restored);
    assert.equal(after.ok, true, JSON.stringify(after));
    assert.equal(after.badPages, 0);
    assert.equal(after.pages, 1024 * 256);
    assert.ok(await until(() => fs.readdirSync(fx.serve.dir).length === 0, 10_000), `session left: ${fs.readdirSync(fx.serve.dir)}`);
    assert.ok(await until(() => stores().length === 0, 10_000), `pages file left: ${stores()}`);
    assert.ok(await until(() => ourFillServers().length === 0, 10_000), 'the lazy-pages server ended');
  } finally {
    await w.stop(restored);
  }
});

test('postcopy: the source agent killed mid-fill: the destination stops its copy, says what is lost, and leaves nothing else behind', { skip }, async (t) => {
  const w = await startMemWorkload({ mib: 1024, writeMBps: 20, netns: fx.hosts.a.netnsPath! });
  let restored = 0;
  const logBefore = fx.serve.stderr().length;
  const log = () => fx.serve.stderr().slice(logBefore);
  // A quiet machine pushes 1 GiB over the veth in about the time the restore
  // takes: at 200 Mbit/s the copy surely runs long before its memory is all there.
  await fx.hosts.shape(200);
  const src = spawnIn(fx.hosts.a, [process.execPath, CLI, ...postcopyArgs(w.pid)], { stdio: ['ignore', 'ignore', 'ignore'] });
  t.after(() => t.diagnostic(log().split('\n').filter((l) => /failed|stopped|lost/.test(l)).join('\n')));
  try {
    // The moment the copy runs, its memory is still on its way (~40 s at this rate).
    assert.ok(await until(() => /running as pid/.test(log()) || src.exitCode !== null, 120_000), log());
    src.kill('SIGKILL'); // the migrate process we started
    const m = /running as pid (\d+)/.exec(log());
    assert.ok(m, `the copy ran: ${log()}`);
    restored = Number(m[1]);
    assert.ok(await until(() => /lazy-pages server failed/.test(log()), 30_000), log());
    assert.doesNotMatch(log(), /memory filled/, 'the fill could not complete');
    // The copy is stopped (or dead of the SIGBUS a fault pending when the server ended gets): not running.
    const st = (isAlive(restored) ? procState(restored) : null) ?? 'gone';
    assert.ok(['T', 'Z', 'gone'].includes(st), `the copy is ${st}: it must not run without its memory`);
    assert.match(log(), /went away before \d+ pages of the tree's memory arrived/, 'the destination says how much is missing');
    assert.match(log(), /the tree is stopped \(SIGSTOP\)/);
    assert.match(log(), /phaul-fast resolve [0-9a-f]{24} on the source host kills this copy and resumes the original/, 'and what to do');
    // The original, at the source, was never killed: it holds the memory the copy lacks.
    assert.equal(procState(w.pid), 'T', 'the original is left stopped');
    assert.ok(await until(() => ourFillServers().length === 0, 10_000), 'the lazy-pages server ended');
    assert.ok(await until(() => fs.readdirSync(fx.serve.dir).length === 0, 10_000), `session left: ${fs.readdirSync(fx.serve.dir)}`);
    assert.ok(await until(() => stores().length === 0, 10_000), `pages file left: ${stores()}`);
  } finally {
    if (src.exitCode === null) src.kill('SIGKILL');
    if (restored > 0 && isAlive(restored)) process.kill(restored, 'SIGKILL'); // the stopped copy, ours
    await w.stop();
    await fx.hosts.shape(null);
  }
});

test('postcopy: a restore that fails before the copy runs rolls back: the original runs on, no copy, server or pages file left', { skip }, async () => {
  // The workload listens on a port that, on the destination host, is taken:
  // CRIU's restore cannot bind it, after the pages began to arrive.
  const port = 7791;
  const listener = "import socket,time\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n" +
    `s.bind(('0.0.0.0', ${port})); s.listen()\nb=bytearray(64<<20)\nfor i in range(0, len(b), 4096): b[i]=1\nwhile True: time.sleep(0.01)\n`;
  const blocker = spawn('nsenter', [`--net=${fx.hosts.b.netnsPath}`, 'python3', '-c', listener], { stdio: 'ignore' });
  const ns = startInPidNamespace(['sh', '-c', 'exec python3 -c "$1" </dev/null >/dev/null 2>&1', 'sh', listener],
    { netns: fx.hosts.a.netnsPath! });
  let pid = -1;
  try {
    assert.ok(await until(() => (pid = ns.initPid()) > 0, 10_000), ns.stderr());
    // Both bound (python starts slowly on a loaded machine): else the restore would not fail.
    assert.ok(await until(() => listening(pid, port) && listening(blocker.pid!, port), 30_000), 'workload and blocker listen');
    const r = await runCli(fx.hosts.a, postcopyArgs(pid));
    // Every message carries the report: a failure here once went undiagnosed.
    const said = `exit ${r.code}: ${r.stderr.trim().slice(-2000)}`;
    assert.notEqual(r.code, 0, `the migration failed (${said})`);
    assert.equal(r.json!.ok, false, said);
    assert.equal(r.json!.rolledBack, true, said);
    assert.match(r.json!.error.message, /criu restore failed/, `it failed where meant to (${said})`);
    assert.ok(isAlive(pid) && procState(pid) !== 'T', `the original runs on (${said})`);
    assert.ok(await until(() => fs.readdirSync(fx.serve.dir).length === 0, 10_000), `session left: ${fs.readdirSync(fx.serve.dir)}`);
    assert.ok(await until(() => stores().length === 0, 10_000), `pages file left: ${stores()}`);
    assert.ok(await until(() => ourFillServers().length === 0, 10_000), 'the lazy-pages server was ended');
  } finally {
    if (pid > 0 && isAlive(pid)) process.kill(pid, 'SIGKILL');
    if (ns.child.pid && isAlive(ns.child.pid)) process.kill(ns.child.pid, 'SIGKILL');
    blocker.kill('SIGKILL');
    // A copy restored against expectation runs this test's program: ours to end.
    for (const p of processesMentioning(listener)) if (isAlive(p)) process.kill(p, 'SIGKILL');
  }
});

test('postcopy: a tree that forks, maps, unmaps, grows (mremap) and shares memory while its memory arrives keeps every page', { skip }, async () => {
  const reports = fs.mkdtempSync(path.join(fx.dir, 'churn-'));
  const ns = startInPidNamespace([path.join(PACKAGE_ROOT, 'build', 'workloads', 'churnwork'), reports], { netns: fx.hosts.a.netnsPath! });
  const read = (role: string) => { try { return JSON.parse(fs.readFileSync(path.join(reports, `report-${role}.json`), 'utf8')); } catch { return null; } };
  let pid = -1;
  let restored = 0;
  try {
    assert.ok(await until(() => (pid = ns.initPid()) > 0 && !!read('parent'), 10_000), `churnwork did not start: ${ns.stderr()}`);
    // The churn starts before the migration (a child forks) and goes on at the destination while pages arrive.
    process.kill(pid, 'SIGUSR2');
    const children = () => { try { return fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim(); } catch { return ''; } };
    assert.ok(await until(() => children() !== '', 10_000), 'churnwork forked its child');
    await sleep(200);
    const r = await runCli(fx.hosts.a, postcopyArgs(pid));
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json!.mode, 'postcopy');
    restored = r.json!.restoredPid;
    assert.ok(r.json!.fill.tasks >= 2, `the forked child came along: ${JSON.stringify(r.json!.fill)}`);
    assert.ok(await waitGone(pid, 5000));
    const before = { parent: read('parent')?.seq ?? 0, child: read('child')?.seq ?? 0 };
    process.kill(restored, 'SIGUSR1');
    let p: any = null;
    let c: any = null;
    await until(() => (p = read('parent'))?.seq > before.parent && (c = read('child'))?.seq > before.child, 10_000);
    assert.ok(p && p.seq > before.parent, 'the restored parent reported');
    assert.ok(c && c.seq > before.child, 'the forked child reported');
    assert.equal(p.ok, true, `parent: ${JSON.stringify(p)}`);
    assert.equal(c.ok, true, `child: ${JSON.stringify(c)}`);
  } finally {
    for (const x of [pid, restored]) if (x > 0 && isAlive(x)) process.kill(x, 'SIGKILL');
    if (ns.child.pid && isAlive(ns.child.pid)) process.kill(ns.child.pid, 'SIGKILL');
    fs.rmSync(reports, { recursive: true, force: true });
  }
});

test('postcopy: the destination agent killed mid-fill: the lazy-pages server stops the copy itself; the source exits lost, the original stopped', { skip }, async () => {
  const own = await startServe(fx.hosts.b, fx.token, path.join(fx.dir, 'dest-killed'));
  const w = await startMemWorkload({ mib: 1024, writeMBps: 20, netns: fx.hosts.a.netnsPath! });
  const agentPid = servePid(own.dir);
  let restored = 0;
  const servers: number[] = [];
  await fx.hosts.shape(200); // the copy runs long before its memory is all there (see above)
  try {
    const run = runCli(fx.hosts.a, postcopyArgs(w.pid, own.port), 300_000);
    assert.ok(await until(() => /running as pid/.test(own.stderr()), 120_000), own.stderr());
    own.proc.kill('SIGKILL'); // the agent we started for this test
    restored = Number(/running as pid (\d+)/.exec(own.stderr())![1]);
    servers.push(...ourFillServers());
    const r = await run;
    assert.equal(r.code, 10, r.stderr);
    assert.equal(r.json!.error.code, 'lost');
    assert.match(r.json!.error.message, /before all the workload's memory reached the destination/);
    assert.equal(procState(w.pid), 'T', 'the original is left stopped');
    // With its agent gone, the server stops the copy: it cannot get the rest of its memory.
    assert.ok(await until(() => !isAlive(restored) || procState(restored) === 'T', 10_000), `the copy is ${procState(restored)}`);
    assert.ok(servers.length > 0, 'the server outlived its agent (it holds the copy\'s userfaultfds)');
  } finally {
    for (const p of [...servers, restored]) if (p > 0 && isAlive(p)) process.kill(p, 'SIGKILL'); // the copy and the server our agent started
    await w.stop();
    await own.stop('SIGKILL');
    await fx.hosts.shape(null);
    for (const n of fs.readdirSync('/dev/shm')) if (agentPid && n.startsWith(`phaul-fast-store-${agentPid}-`)) fs.rmSync(path.join('/dev/shm', n), { recursive: true, force: true });
  }
});
