// Proves the test/bench helpers themselves: the memory workload detects what
// it must (corruption, stalls), survives a CRIU dump/restore with report/stop
// on the restored pid, and the two-host network works, shapes and cleans up.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { criuBinary } from '../src/criu/binary';
import { startMemWorkload } from '../src/testing/workload';
import { createLoopbackHost, createTwoHosts, type Host, type TwoHosts } from '../src/testing/hosts';
import { runCmd, signal, sleep, isAlive } from '../src/testing/proc';

test('memwork verifies all pages while writing with several threads', async () => {
  const w = await startMemWorkload({ mib: 64, writeMBps: 200, threads: 2 });
  try {
    assert.ok(isAlive(w.pid));
    await sleep(300);
    const r = await w.report();
    assert.equal(r.ok, true);
    assert.equal(r.pages, 64 * 256);
    assert.equal(r.badPages, 0);
    assert.equal(r.firstBad, -1);
    assert.ok(r.iterations > 50, `iterations ${r.iterations}`);
    assert.ok(r.maxGapMs < 100, `maxGapMs ${r.maxGapMs}`);
    assert.equal(r.seq, 2);
  } finally {
    await w.stop();
  }
  assert.ok(!isAlive(w.pid) && !isAlive(w.launcherPid));
});

test('memwork detects a corrupted page', async () => {
  const w = await startMemWorkload({ mib: 16 }); // idle: nothing rewrites the page
  try {
    const addr = Number(BigInt(w.lastReport()!.addr));
    const fd = fs.openSync(`/proc/${w.pid}/mem`, 'r+');
    fs.writeSync(fd, Buffer.from([0xde, 0xad]), 0, 2, addr + 7 * 4096 + 1000);
    fs.closeSync(fd);
    const r = await w.report();
    assert.equal(r.ok, false);
    assert.equal(r.badPages, 1);
    assert.equal(r.firstBad, 7);
  } finally {
    await w.stop();
  }
});

test('memwork reports a stall as maxGapMs and resets it on request', async () => {
  const w = await startMemWorkload({ mib: 16, writeMBps: 50 });
  try {
    await w.resetGap();
    signal(w.pid, 'SIGSTOP');
    await sleep(300);
    signal(w.pid, 'SIGCONT');
    await sleep(50);
    const r = await w.report();
    assert.ok(r.ok);
    assert.ok(r.maxGapMs >= 280 && r.maxGapMs < 1000, `maxGapMs ${r.maxGapMs}`);
    await w.resetGap();
    await sleep(50);
    const r2 = await w.report();
    assert.ok(r2.maxGapMs < 100, `after reset maxGapMs ${r2.maxGapMs}`);
  } finally {
    await w.stop();
  }
});

test('memwork rejects bad arguments with one line', async () => {
  const r = await runCmd([path.join(__dirname, '..', '..', 'build', 'workloads', 'memwork'), '--mib', 'x', '--report', '/dev/null']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /^memwork: --mib needs a whole number/);
  assert.equal(r.stderr.trim().split('\n').length, 1);
});

test('a restored memwork is driven by its explicit pid', async () => {
  const criu = criuBinary();
  const img = fs.mkdtempSync(path.join(os.tmpdir(), 'phaul-testing-img-'));
  const w = await startMemWorkload({ mib: 32, writeMBps: 100 });
  let restored = -1;
  try {
    await w.resetGap();
    const d = await runCmd([criu, 'dump', '-t', String(w.pid), '-D', img, '-o', 'dump.log'], { timeoutMs: 30_000 });
    assert.equal(d.code, 0, fs.readFileSync(path.join(img, 'dump.log'), 'utf8').slice(-2000));
    // CRIU restores into a new time namespace whose monotonic clock continues
    // from the dump: memwork must still see this wait as part of its pause.
    await sleep(500);
    const pidfile = path.join(img, 'restored.pid');
    const rs = await runCmd([criu, 'restore', '-D', img, '-d', '--pidfile', pidfile, '-o', 'restore.log'], { timeoutMs: 30_000 });
    assert.equal(rs.code, 0, fs.readFileSync(path.join(img, 'restore.log'), 'utf8').slice(-2000));
    restored = Number(fs.readFileSync(pidfile, 'utf8'));
    w.adopt(restored);
    const r = await w.report(restored);
    assert.ok(r.ok);
    assert.ok(r.maxGapMs >= 500, `dump, 500 ms, restore must show as a stall of >= 500 ms: ${r.maxGapMs}`);
  } finally {
    await w.stop();
    fs.rmSync(img, { recursive: true, force: true });
  }
  assert.ok(restored > 0 && !isAlive(restored));
});

const connectScript = (addr: string, port: number) =>
  `const c=require('net').connect({port:${port},host:'${addr}',timeout:1500},()=>c.write('ping'));
   c.on('data',d=>{console.log(String(d));c.end()});c.on('timeout',()=>process.exit(3));c.on('error',e=>{console.error(e.message);process.exit(4)})`;

// A one-shot TCP echo server on `to`, a client on `from`: returns what came back.
async function echo(h: TwoHosts, from: Host, to: Host): Promise<string> {
  const port = 21000 + (process.pid % 20000);
  const server = `const s=require('net').createServer(c=>c.on('data',d=>{c.end(d[0]===112?'pong':'?');s.close()}))
    .listen(${port},'${to.addr}',()=>console.log('up'))`;
  const srv = h.spawn(to, [process.execPath, '-e', server], { stdio: ['ignore', 'pipe', 'inherit'] });
  const closed = new Promise((r) => srv.on('close', r));
  let out = '';
  srv.stdout!.on('data', (d) => { out += d; });
  while (!out.includes('up')) await sleep(10);
  const c = await h.run(from, [process.execPath, '-e', connectScript(to.addr, port)], { timeoutMs: 10_000 });
  await closed;
  return c.stdout.trim();
}

test('two hosts reach each other and are gone after destroy()', async () => {
  const h = await createTwoHosts({ prefix: 'pftt' });
  try {
    assert.ok(fs.existsSync(h.a.netnsPath!) && fs.existsSync(h.b.netnsPath!));
    // A workload started in a host lives in that host's network namespace.
    const w = await startMemWorkload({ mib: 4, netns: h.a.netnsPath! });
    try {
      assert.equal(fs.readlinkSync(`/proc/${w.pid}/ns/net`), `net:[${fs.statSync(h.a.netnsPath!).ino}]`);
    } finally {
      await w.stop();
    }
    // No ping binary on this machine: a TCP echo both ways proves the same.
    assert.equal(await echo(h, h.a, h.b), 'pong');
    assert.equal(await echo(h, h.b, h.a), 'pong');
    // The machine's own namespace cannot reach the pair.
    const out = await runCmd([process.execPath, '-e', connectScript(h.b.addr, 1)], { timeoutMs: 5_000 });
    assert.notEqual(out.code, 0);
  } finally {
    await h.destroy();
  }
  assert.ok(!fs.existsSync(h.a.netnsPath!) && !fs.existsSync(h.b.netnsPath!));
  const links = await runCmd(['ip', '-o', 'link']);
  assert.ok(!links.stdout.includes(h.a.name));
  await h.destroy(); // twice is fine
});

// Sends `mib` MiB from a to b over TCP; returns Mbit/s as the receiver saw it.
async function transfer(h: TwoHosts, mib: number): Promise<number> {
  const port = 20000 + (process.pid % 20000);
  const server = `const n=require('net');let b=0,t0=0;const s=n.createServer(c=>{c.on('data',d=>{if(!t0)t0=performance.now();b+=d.length});
    c.on('end',()=>{console.log(JSON.stringify({b,ms:performance.now()-t0}));s.close()})}).listen(${port},'${h.b.addr}',()=>console.log('up'))`;
  const client = `const c=require('net').connect(${port},'${h.b.addr}',()=>{const buf=Buffer.alloc(1<<20);let i=0;
    const go=()=>{while(i<${mib}){i++;if(!c.write(buf))return c.once('drain',go)}c.end()};go()})`;
  const srv = h.spawn(h.b, [process.execPath, '-e', server], { stdio: ['ignore', 'pipe', 'inherit'] });
  const closed = new Promise((r) => srv.on('close', r));
  let out = '';
  srv.stdout!.on('data', (d) => { out += d; });
  while (!out.includes('up')) await sleep(10);
  const c = await h.run(h.a, [process.execPath, '-e', client], { timeoutMs: 30_000 });
  assert.equal(c.code, 0, c.stderr);
  await closed;
  const res = JSON.parse(out.trim().split('\n').pop()!);
  assert.equal(res.b, mib << 20);
  return (res.b * 8) / (res.ms / 1000) / 1e6;
}

test('a tbf-shaped link limits throughput', async (t) => {
  const h = await createTwoHosts({ prefix: 'pftt' });
  try {
    const b0 = await h.linkBytes();
    const fast = await transfer(h, 64);
    const moved = (await h.linkBytes()) - b0;
    assert.ok(moved > 64 * 2 ** 20 && moved < 70 * 2 ** 20, `link counted ${moved} bytes for 64 MiB`);
    await h.shape(100);
    const slow = await transfer(h, 12);
    await h.shape(null);
    const again = await transfer(h, 64);
    t.diagnostic(`unshaped ${fast.toFixed(0)} Mbit/s, tbf 100 Mbit/s: ${slow.toFixed(0)}, unshaped again ${again.toFixed(0)}`);
    assert.ok(slow > 50 && slow < 130, `shaped to 100 Mbit/s: ${slow.toFixed(0)} Mbit/s`);
    assert.ok(fast > 500 && again > 500, `unshaped: ${fast.toFixed(0)} / ${again.toFixed(0)} Mbit/s`);
  } finally {
    await h.destroy();
  }
});

test('a loopback host is one namespace at 127.0.0.1 with its own byte counter', async () => {
  const h = await createLoopbackHost({ prefix: 'pftt' });
  try {
    assert.equal(h.a, h.b);
    assert.equal(h.a.addr, '127.0.0.1');
    const b0 = await h.linkBytes();
    assert.equal(await echo(h, h.a, h.b), 'pong');
    assert.ok((await h.linkBytes()) > b0);
    await assert.rejects(h.shape(100));
  } finally {
    await h.destroy();
  }
  assert.ok(!fs.existsSync(h.a.netnsPath!));
});

// The benchmark's pure parts: matrix, statistics, report.
import { buildMatrix, CONTAINER_STRATEGIES, estimateSeconds, STRATEGIES, SWITCHOVER_ONLY } from '../bench/matrix';
import { addPauseRatios, median, summarize, type RatioRow } from '../bench/stats';
import { markdown, svgChart } from '../bench/report';
import type { Row } from '../bench/runner';
import { now, paced, STALL_MS } from '../bench/workloads/line-client';
import { describeWaits } from '../bench/workloads/served-app';

test('bench: the quick matrix covers every strategy, a 1 GiB size and fits 3 minutes', () => {
  const cells = buildMatrix({ quick: true });
  for (const s of STRATEGIES) assert.equal(cells.some((c) => c.strategy === s), !SWITCHOVER_ONLY.includes(s), s);
  const sw = buildMatrix({ switchover: true });
  for (const s of STRATEGIES) assert.ok(sw.some((c) => c.strategy === s), `switchover matrix: ${s}`);
  assert.ok(sw.some((c) => c.workload.memMiB === 32 && c.workload.writeMBps === 5 && c.link === 'loopback'));
  assert.ok(sw.some((c) => c.workload.kind === 'memcached'));
  // Issue 12's small real applications, each in the default mode and through CRIU's own dump and restore.
  for (const kind of ['redis', 'pythreads'] as const) {
    for (const s of ['phaul-fast:hybrid', 'criu:local'] as const) assert.ok(sw.some((c) => c.workload.kind === kind && c.strategy === s), `${kind} ${s}`);
  }
  assert.ok(!sw.some((c) => c.link === 'loopback' && (c.workload.kind === 'redis' || c.workload.kind === 'memcached')));
  assert.ok(cells.some((c) => c.workload.memMiB >= 1024));
  assert.ok(cells.some((c) => c.workload.kind === 'memcached'));
  assert.ok(estimateSeconds(cells) < 180, `quick estimate ${estimateSeconds(cells)} s`);
  const full = buildMatrix({});
  assert.deepEqual([...new Set(full.map((c) => c.link))], ['loopback', '10gbit', '1gbit']);
  assert.ok(!full.some((c) => c.link === 'loopback' && c.workload.kind === 'memcached'));
});

test('bench: the container matrix moves containers with phaul-fast\'s modes and the runtimes\' own paths, and nothing else', () => {
  const cells = buildMatrix({ containers: true });
  const ctr = cells.filter((c) => c.workload.kind === 'container');
  for (const s of CONTAINER_STRATEGIES) assert.ok(ctr.some((c) => c.strategy === s && c.workload.memMiB === 1024), s);
  assert.ok(!ctr.some((c) => c.strategy.startsWith('criu:')), 'CRIU\'s own paths move process trees, not containers');
  // The plain process tree beside it, in the default mode only.
  assert.deepEqual([...new Set(cells.filter((c) => c.workload.kind !== 'container').map((c) => c.strategy))], ['phaul-fast:hybrid']);
  // Asked for by name, a runtime's path never lands on a process tree.
  assert.ok(!buildMatrix({ quick: true, strategies: ['runc:page-server', 'criu:page-server'] }).some((c) => c.strategy === 'runc:page-server'));
  assert.ok(!buildMatrix({}).some((c) => c.workload.kind === 'container'));
});

test('bench: median and spread', () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 2, 3]), 2.5);
  assert.deepEqual(summarize([5, NaN, 1, 3]), { median: 3, min: 1, max: 5 });
  assert.equal(summarize([]), null);
});

test('bench: pause ratios pair run i of a strategy with run i of criu:page-server', () => {
  const r = (strategy: string, link: string, pauses: number[], status = 'ok'): RatioRow => ({
    strategy, workload: 'memwork', memMiB: 1024, writeMBps: 20, link, status, samples: pauses.map((pauseMs) => ({ pauseMs })),
  });
  const rows = addPauseRatios([
    r('phaul-fast:stop-copy', 'loopback', [500, 900, 600]),
    r('criu:page-server', 'loopback', [1000, 1000, 2000]),
    r('phaul-fast:stop-copy', '1gbit', [700]), // no baseline on this link
    r('criu:lazy', 'loopback', [], 'failed'),
  ], 'criu:page-server');
  assert.deepEqual(rows[0].pauseRatio, { vs: 'criu:page-server', median: 0.5, min: 0.3, max: 0.9 });
  assert.equal(rows[1].pauseRatio, undefined);
  assert.equal(rows[2].pauseRatio, undefined);
  assert.equal(rows[3].pauseRatio, undefined);
});

test('bench: markdown table and SVG chart', () => {
  const machine = { cpu: 'cpu', cores: 2, memGiB: 24, kernel: '6.18', os: 'Debian', criu: '4.1.1', node: 'v20', phaulFast: '0.1.0', date: '2026-01-01T00:00:00Z', wpFaultUs: 15.2 };
  const row = (strategy: Row['strategy'], memMiB: number, pauseMs: number): Row => ({
    strategy, workload: 'memwork', memMiB, writeMBps: 50, link: 'loopback', status: 'ok', pauseMs, downtimeMs: pauseMs,
    totalMs: pauseMs * 2, bytes: memMiB * 2 ** 20, rounds: 1, sourceFreeMs: pauseMs, cpuS: 0.5, cpuSPerGiB: 0.5 / (memMiB / 1024), runs: 2,
    spread: { pauseMs: { min: pauseMs * 0.9, max: pauseMs * 1.1 } }, samples: [],
  });
  const rows = [row('criu:page-server', 256, 600), row('criu:page-server', 1024, 1800), row('criu:lazy', 256, 150),
    { ...row('phaul-fast:hybrid', 256, 0), status: 'unavailable' as const, pauseMs: null, note: 'not offered' },
    { ...row('phaul-fast:precopy', 256, 300), phases: { precopy: 900, 'criu-dump': 80, 'final-pages': 20, 'criu-restore': 150, commit: 10 } }];
  const md = markdown(rows, machine, 'phaul-fast bench --quick', 100);
  assert.match(md, /phaul-fast 0\.1\.0, write-protect fault 15\.2 µs\./, 'the machine line says what a write-protect fault costs there');
  assert.match(md, /\| memwork \| 1024 \| 50 \| loopback \| criu:page-server \| 1800 \(1620–1980\) \| 1x \|/);
  assert.match(md, /\| 0\.50 \| 0\.50 \| – \| 2 \| ok \|/, 'CPU s and CPU s per GiB moved (then first pass MB/s: none here)');
  assert.match(md, /unavailable: not offered/);
  // The pause budget lists the phases inside the pause only, in the engine's order.
  assert.match(md, /\| workload \| MiB \| writes MB\/s \| link \| strategy \| downtime ms \| criu-dump \| final-pages \| criu-restore \| commit \|/);
  assert.match(md, /\| memwork \| 256 \| 50 \| loopback \| phaul-fast:precopy \| 300 \| 80 \| 20 \| 150 \| 10 \|/);
  const svg = svgChart(rows, machine);
  assert.match(svg, /^<svg /);
  assert.match(svg, /<polyline[^>]+stroke="#d62728"/); // page-server: a line over two sizes
  assert.ok(!svg.includes('phaul-fast:hybrid'));
  assert.match(svg, /<\/svg>\n$/);
});

test('bench client: paced() reports its longest wait, when it began, and every stall', async () => {
  let calls = 0;
  const listeners = process.listenerCount('SIGTERM');
  const before = now();
  const r = await paced(1, 64, async () => undefined, async () => {
    calls++;
    if (calls === 2) await sleep(STALL_MS + 30);
    if (calls === 4) throw new Error('connection closed');
  });
  const after = now();
  assert.equal(r.end, 'connection closed');
  assert.ok(r.longestStepMs >= STALL_MS + 30, `longest ${r.longestStepMs} ms`);
  assert.ok(r.longestStepAt >= Math.floor(before) && r.longestStepAt <= after, 'the longest wait began during the run');
  assert.ok(r.stalls.some(([at, ms]) => at === r.longestStepAt && ms === r.longestStepMs), JSON.stringify(r.stalls));
  for (const [, ms] of r.stalls) assert.ok(ms >= STALL_MS);
  assert.equal(process.listenerCount('SIGTERM'), listeners, 'paced() removes its SIGTERM handler');
  const text = describeWaits({ end: 'x', longestStepMs: 120, longestStepAt: 1_500, stalls: [[900, 60], [1_500, 120]] }, 1_000);
  assert.equal(text, `longest wait 120 ms from 500 ms; waits >= ${STALL_MS} ms (from ms: length): -100: 60, 500: 120`);
  assert.equal(describeWaits({ end: 'x', longestStepMs: 7, longestStepAt: 0, stalls: [] }, 0), 'longest wait 7 ms');
});

test('bench tracker-stall: redis writes fault only on pages a round protected, and every one it wrote is reported (root, redis-server)', async (t) => {
  if (process.getuid?.() !== 0) return t.skip('needs root (the tracker borrows a thread of redis with ptrace)');
  if (!fs.existsSync('/usr/bin/redis-server')) return t.skip('redis-server not installed (scripts/setup.sh installs it)');
  const tool = path.join(__dirname, '..', 'bench', 'tracker-stall.js');
  const run = async (mode: string) => {
    const r = await runCmd([process.execPath, tool, mode, '0.2'], { timeoutMs: 120_000 });
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout.trim().split('\n').pop()!) as { steps: Array<[number, string]>; badValues: number; faultsPerSAfter: number };
  };
  const pages = (steps: Array<[number, string]>, round: number) => Number(/, (\d+) pages$/.exec(steps.find(([, s]) => s.startsWith(`round ${round}: scan`))![1])![1]);
  const read = await run('read');
  const prot = await run('protect');
  for (const r of [read, prot]) assert.equal(r.badValues, 0);
  // Nothing protected: every round reports every page again.
  assert.equal(pages(read.steps, 1), pages(read.steps, 0));
  // Protected: round 1 reports only what the client wrote since (SETs, and GETs, which write redis's LRU clocks):
  // at most redis's ~42,700 heap pages, never the ~17,000 other tracked pages nothing writes; each page written faulted once.
  assert.ok(pages(prot.steps, 1) < pages(prot.steps, 0) * 0.75, JSON.stringify(prot.steps));
  assert.ok(prot.faultsPerSAfter > read.faultsPerSAfter, `faults/s protect ${prot.faultsPerSAfter} vs read ${read.faultsPerSAfter}`);
});
