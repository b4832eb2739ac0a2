// What pre-copy's dirty tracking costs a single-threaded server, step by step
// (docs/BENCH.md "What slows redis during pre-copy rounds"): a redis with 2^20
// keys and the bench's busy client, the tracker driven the way pre-copy's
// rounds drive it, and the client's waits placed against each step.
//
//   node dist/bench/tracker-stall.js MODE [MBPS]      (root; redis-server installed by setup)
//     MODE  none     no tracking: the client's waits at this load
//           read     round 0 scans without protecting and reads every page; later rounds likewise
//           protect  every round protects what it reports again (the engine's rounds)
//           once     round 0 protects, later rounds only report (no protection after the first)
//     MBPS  the client's write rate (default 5; 0: a few GETs per step, no SETs)
//
// Prints one JSON line: the steps (ms from the client's start), the client's
// waits of 50 ms or more, its longest wait before and after the tracker
// started, redis's CPU (user + system ms/s) before and after, its minor
// faults/s after, and the samples (every 250 ms) these come from.
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DirtyTracker } from '../src/memory/dirty-tracker';
import { readPages } from '../src/memory/read-pages';
import { batches, RANGE_PRESENT, RANGE_SWAPPED, selectPairs } from '../src/memory/ranges';
import { killPids, runCmd, sleep } from '../src/testing/proc';
import { findProgram } from './workloads/served-app';

const MODES = ['none', 'read', 'protect', 'once'] as const;
type Mode = (typeof MODES)[number];
const KEYS = 1 << 20;
const VALUE_SIZE = 64;
const BATCH_BYTES = 4 << 20;
const SAMPLE_MS = 250;
/** /proc/PID/stat counts CPU time in clock ticks of USER_HZ, 100 a second on Linux. */
const TICK_MS = 10;
const now = () => performance.timeOrigin + performance.now();

/** utime, stime (ms) and minor faults of a process, from /proc/PID/stat. */
function usage(pid: number): { user: number; sys: number; faults: number } {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return { user: Number(f[11]) * TICK_MS, sys: Number(f[12]) * TICK_MS, faults: Number(f[7]) };
}

async function readAll(pid: number, ranges: BigUint64Array): Promise<number> {
  let pages = 0;
  for (const b of batches(selectPairs(ranges, RANGE_PRESENT | RANGE_SWAPPED), BATCH_BYTES)) pages += (await readPages(pid, b)).bytes / 4096;
  return pages;
}

async function main(): Promise<number> {
  const mode = (process.argv[2] ?? '') as Mode;
  const mbps = process.argv[3] ?? '5';
  if (!MODES.includes(mode) || !/^\d+(\.\d+)?$/.test(mbps)) {
    process.stderr.write(`usage: tracker-stall.js ${MODES.join('|')} [MBPS]\n`);
    return 2;
  }
  const port = 17000 + (process.pid % 1000);
  const agent = path.join(__dirname, 'workloads', 'redis-agent.js');
  const server = spawn(await findProgram('redis-server'), ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
    '--logfile', '', '--enable-debug-command', 'yes'], { stdio: 'ignore' });
  let client: ChildProcess | undefined;
  let tracker: DirtyTracker | undefined;
  try {
    const load = await runCmd([process.execPath, agent, 'load', '127.0.0.1', String(port), String(KEYS), String(VALUE_SIZE)], { timeoutMs: 120_000 });
    if (load.code !== 0) throw new Error(`loading redis failed: ${load.stderr.trim()}`);
    const cl = spawn(process.execPath, [agent, 'busy', '127.0.0.1', String(port), String(KEYS), String(VALUE_SIZE), mbps], { stdio: ['ignore', 'pipe', 'inherit'] });
    client = cl;
    let out = '';
    cl.stdout!.on('data', (d) => { out += d; });
    while (!out.includes('"ready"')) {
      if (cl.exitCode !== null) throw new Error('the client ended before it was ready');
      await sleep(10);
    }
    const t0 = now();
    const at = () => Math.round(now() - t0);
    const steps: Array<[number, string]> = [];
    const samples: Array<{ at: number; userMsPerS: number; sysMsPerS: number; faultsPerS: number }> = [];
    let last = usage(server.pid!);
    const sampler = setInterval(() => {
      const u = usage(server.pid!);
      const k = 1000 / SAMPLE_MS;
      samples.push({ at: at(), userMsPerS: (u.user - last.user) * k, sysMsPerS: (u.sys - last.sys) * k, faultsPerS: (u.faults - last.faults) * k });
      last = u;
    }, SAMPLE_MS);
    await sleep(2000);
    const started = at();
    if (mode !== 'none') {
      tracker = new DirtyTracker(server.pid!);
      await tracker.start();
      steps.push([at(), 'tracker started']);
      // Rounds as pre-copy spaces them: round 0 then two more, ~1.5 and 1 s apart.
      for (const [round, gapMs] of [[0, 1500], [1, 1000], [2, 1500]]) {
        const protect = mode === 'protect' || (mode === 'once' && round === 0);
        const s = await tracker.scan({ protect });
        steps.push([at(), `round ${round}: scan${protect ? ' and protect' : ''} ${s.timing.scanMs.toFixed(1)} ms, ${s.pages} pages`]);
        const pages = await readAll(server.pid!, s.ranges);
        steps.push([at(), `round ${round}: ${pages} pages read`]);
        await sleep(gapMs);
      }
    } else {
      await sleep(5000);
    }
    clearInterval(sampler);
    cl.kill('SIGTERM');
    await new Promise((r) => cl.once('exit', r));
    const res = JSON.parse(out.trim().split('\n').pop()!) as { ops: number; bad: number; stalls: Array<[number, number]> };
    const stalls = res.stalls.map(([a, ms]) => [Math.round(a - t0), ms] as [number, number]);
    const longest = (from: number, to: number) => Math.max(0, ...stalls.filter(([a]) => a >= from && a < to).map(([, ms]) => ms));
    const mean = (from: number, to: number, f: (x: (typeof samples)[number]) => number) => {
      const xs = samples.filter((x) => x.at > from && x.at <= to);
      return Math.round(xs.reduce((n, x) => n + f(x), 0) / Math.max(xs.length, 1));
    };
    const cpu = (x: (typeof samples)[number]) => x.userMsPerS + x.sysMsPerS;
    process.stdout.write(`${JSON.stringify({
      mode, mbps: Number(mbps), keys: KEYS, steps, stalls, longestBeforeMs: longest(-Infinity, started), longestAfterMs: longest(started, Infinity),
      cpuMsPerSBefore: mean(0, started, cpu), cpuMsPerSAfter: mean(started, Infinity, cpu), faultsPerSAfter: mean(started, Infinity, (x) => x.faultsPerS),
      ops: res.ops, badValues: res.bad, samples,
    })}\n`);
    return res.bad === 0 ? 0 : 1;
  } finally {
    tracker?.close();
    if (client?.exitCode === null) client.kill('SIGKILL');
    await killPids([server.pid!], ['redis-server']);
  }
}

main().then((code) => { process.exitCode = code; }, (e) => {
  process.stderr.write(`tracker-stall: ${(e as Error).message}\n`);
  process.exitCode = 1;
});
