// A network server from Debian's packages as a benchmark workload (memcached,
// redis): started as the init of its own pid namespace on the source host,
// loaded with a data set by a client helper, kept busy by a client until the
// switchover; after the migration the whole data set is checked on the
// destination. The pause is the client's service gap: from its last reply
// from the source (it stays connected through pre-copy rounds until the
// freeze) to the first reply from the destination. On two hosts a prober
// polls the destination's address from the start, so it sees the first
// moment the restored server answers, not when the engine gets round to
// saying so; on loopback (one namespace, where the source would answer) it
// starts when the engine reports the workload running.
//
// The client's connection cannot move: --tcp-established restores only where
// the source's address exists, which the other host has not. So every
// strategy dumps it closed (tcpClose: CRIU's --tcp-close, migrate
// --tcp-close), as a user moving a server whose clients reconnect would.
// Servers listen on 0.0.0.0 so their socket restores anywhere.
import type { ChildProcess } from 'node:child_process';
import { startInPidNamespace } from '../../src/testing/workload';
import { killPids, runCmd, sleep, signal } from '../../src/testing/proc';
import { runIn, spawnIn } from '../../src/testing/hosts';
import type { BenchWorkload, Verdict, WorkloadEnv } from './types';
import { now, STALL_MS, type PacedResult } from './line-client';

export interface ServedApp {
  /** The server's command line (its first word is the binary's path). */
  argv: string[];
  /** Process names stopAll may signal (with the pid namespace's `unshare`). */
  comm: string;
  port: number;
  /** The client helper: [node, script]; it takes `load|busy|probe|check HOST PORT ...args`. */
  agent: string[];
  /** Arguments after HOST PORT for load and check (data set size), and busy's rate besides. */
  dataArgs: string[];
  writeMBps: number;
  /** check's JSON (and the busy client's) -> the verdict's ok and detail. */
  judge(check: Record<string, number>, client: Record<string, number>): { ok: boolean; detail: string };
}

/** A program's path: Debian's package, which scripts/setup.sh installs; nothing is installed at run time. */
export async function findProgram(name: string): Promise<string> {
  const which = await runCmd(['sh', '-c', `command -v ${name}`]);
  if (which.code !== 0) throw new Error(`${name} is not installed: run \`npm run setup\` (its package list has it)`);
  return which.stdout.trim();
}

// The busy client's last line is its counters and paced()'s PacedResult.
function lastJson(out: string): Record<string, number> {
  return JSON.parse(out.trim().split('\n').pop() || '{}');
}

/**
 * The client's longest wait at the source and its waits of STALL_MS or more,
 * in ms from the migration's start (negative: before it), so that they can be
 * placed against the engine's phases and rounds.
 */
export function describeWaits(c: PacedResult, migrationAt: number): string {
  const rel = (at: number) => Math.round(at - migrationAt);
  const longest = `longest wait ${c.longestStepMs} ms` + (c.longestStepAt && migrationAt ? ` from ${rel(c.longestStepAt)} ms` : '');
  const stalls = c.stalls ?? [];
  if (!migrationAt || stalls.length === 0) return longest;
  return `${longest}; waits >= ${STALL_MS} ms (from ms: length): ${stalls.map(([at, ms]) => `${rel(at)}: ${ms}`).join(', ')}`;
}

export async function startServedApp(app: ServedApp, env: WorkloadEnv): Promise<BenchWorkload> {
  const PORT = String(app.port);
  const ns = startInPidNamespace(app.argv, { netns: env.src.netnsPath ?? undefined, stderr: 'ignore' });
  const launcher = ns.child.pid ?? -1;
  const helpers: ChildProcess[] = [];
  let pid = -1;
  const stopAll = async (restoredPid?: number) => {
    for (const h of helpers) if (h.exitCode === null && h.pid) signal(h.pid, 'SIGKILL');
    await killPids([pid, launcher, restoredPid ?? -1], [app.comm, 'unshare']);
  };
  try {
    for (let i = 0; i < 500 && (pid = ns.initPid()) < 0; i++) await sleep(10);
    if (pid < 0) throw new Error(`${app.comm} did not start: ${ns.exited ?? 'no process'}`);
    const ld = await runIn(env.src, [...app.agent, 'load', env.src.addr, PORT, ...app.dataArgs], { timeoutMs: 300_000 });
    if (ld.code !== 0) throw new Error(`loading ${app.comm}: ${ld.stderr.trim()}`);
  } catch (e) {
    await stopAll();
    throw e;
  }

  // The client keeps the server busy from now until the switchover.
  const busy = spawnIn(env.src, [...app.agent, 'busy', env.src.addr, PORT, ...app.dataArgs, String(app.writeMBps)],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  helpers.push(busy);
  let busyOut = '';
  busy.stdout!.on('data', (d) => { busyOut += d; });
  busy.stderr!.on('data', (d) => { busyOut += d; });
  const busyDone = new Promise<void>((r) => busy.once('close', () => r()));
  // The migration may start only once the client runs: a client stopped before it has its
  // signal handler would report nothing.
  for (let i = 0; !busyOut.includes('"ready"'); i++) {
    if (busy.exitCode !== null || i > 3000) {
      await stopAll();
      throw new Error(`${app.comm} client did not start: ${busyOut.trim().slice(-200)}`);
    }
    await sleep(10);
  }
  let probe: Promise<{ code: number | null; stdout: string; stderr: string }> | null = null;
  const startProbe = () => {
    probe ??= runIn(env.dst, [...app.agent, 'probe', env.dst.addr, PORT, '120000'], { timeoutMs: 130_000 });
  };
  const sameHost = env.src.netnsPath === env.dst.netnsPath;
  // When the migration began (wall clock): the client's stalls are told from it.
  let migrationAt = 0;

  return {
    pid,
    tcpClose: true,
    async beforeMigration() {
      migrationAt = now();
      if (!sameHost) startProbe();
    },
    onRunning: startProbe,
    async verify(): Promise<Verdict> {
      startProbe();
      const p = await probe!;
      // The busy client ended when the source's connection did; if not yet, now.
      if (busy.pid && busy.exitCode === null) signal(busy.pid, 'SIGTERM');
      await busyDone;
      let client: Record<string, number>;
      try { client = lastJson(busyOut); } catch { return { ok: false, pauseMs: null, detail: `${app.comm} client: ${busyOut.trim().slice(-200)}` }; }
      if (p.code !== 0) return { ok: false, pauseMs: null, detail: `no reply from the destination: ${p.stderr.trim()}` };
      const pauseMs = lastJson(p.stdout).firstReplyAt - client.lastReplyAt;
      const c = await runIn(env.dst, [...app.agent, 'check', env.dst.addr, PORT, ...app.dataArgs], { timeoutMs: 300_000 });
      if (c.code !== 0) return { ok: false, pauseMs, detail: `check failed: ${c.stderr.trim()}` };
      const v = app.judge(lastJson(c.stdout), client);
      // How the client's session at the source ended, and its waits there (stalls before the freeze).
      return { pauseMs, ok: v.ok, detail: `${v.detail}; client at the source: ended by ${client.end}, ${describeWaits(client as unknown as PacedResult, migrationAt)}` };
    },
    stop: (restoredPid?: number) => stopAll(restoredPid),
  };
}
