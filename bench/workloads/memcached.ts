// memcached from Debian's packages as a benchmark workload. It is loaded with
// memMiB of items, and a client keeps using it (sets at writeMBps, checked
// gets) until the switchover; after the migration every item is checked on
// the destination. The pause is the client's service gap: from the start of
// the migration (the source served until then) to the first reply from the
// destination. On two hosts a prober polls the destination's address from
// the start, so it sees the first moment the restored memcached answers, not
// when the engine gets round to saying so; on loopback (one namespace, where
// the source would answer) it starts when the engine reports the workload running.
//
// The client disconnects at the switchover (when the migration starts):
// CRIU cannot dump an established TCP connection without --tcp-established,
// and that restores only where the source's address exists, which the other
// host has not. memcached listens on 0.0.0.0 so its socket restores anywhere.
import * as path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { startInPidNamespace } from '../../src/testing/workload';
import { killPids, runCmd, sleep, signal } from '../../src/testing/proc';
import { runIn, spawnIn } from '../../src/testing/hosts';
import type { WorkloadSpec } from '../matrix';
import type { BenchWorkload, Verdict, WorkloadEnv } from './types';

const PORT = 11211;
const VALUE_SIZE = 4000;
const AGENT = [process.execPath, path.join(__dirname, 'mc-agent.js')];

/** memcached's path. It comes from Debian's package, which scripts/setup.sh installs: nothing is installed at run time. */
export async function findMemcached(): Promise<string> {
  const which = await runCmd(['sh', '-c', 'command -v memcached']);
  if (which.code !== 0) throw new Error('memcached is not installed: run `npm run setup` (its package list has it)');
  return which.stdout.trim();
}

function lastJson(out: string): Record<string, number> {
  return JSON.parse(out.trim().split('\n').pop() || '{}');
}

export async function startMemcached(spec: WorkloadSpec, env: WorkloadEnv): Promise<BenchWorkload> {
  const bin = await findMemcached();
  const items = Math.floor((spec.memMiB * 2 ** 20) / VALUE_SIZE);
  const cacheMiB = Math.ceil(spec.memMiB * 1.6) + 64; // slab overhead: nothing may be evicted
  const ns = startInPidNamespace([bin, '-u', 'root', '-l', '0.0.0.0', '-p', String(PORT), '-m', String(cacheMiB), '-t', '2', '-c', '256'],
    { netns: env.src.netnsPath ?? undefined, stderr: 'ignore' });
  const launcher = ns.child.pid ?? -1;
  const helpers: ChildProcess[] = [];
  let pid = -1;
  const stopAll = async (restoredPid?: number) => {
    for (const h of helpers) if (h.exitCode === null && h.pid) signal(h.pid, 'SIGKILL');
    await killPids([pid, launcher, restoredPid ?? -1], ['memcached', 'unshare']);
  };
  try {
    for (let i = 0; i < 500 && (pid = ns.initPid()) < 0; i++) await sleep(10);
    if (pid < 0) throw new Error(`memcached did not start: ${ns.exited ?? 'no process'}`);
    const ld = await runIn(env.src, [...AGENT, 'load', env.src.addr, String(PORT), String(items), String(VALUE_SIZE)], { timeoutMs: 300_000 });
    if (ld.code !== 0) throw new Error(`loading memcached: ${ld.stderr.trim()}`);
  } catch (e) {
    await stopAll();
    throw e;
  }

  // The client keeps the server busy from now until the switchover.
  const busy = spawnIn(env.src, [...AGENT, 'busy', env.src.addr, String(PORT), String(items), String(VALUE_SIZE), String(spec.writeMBps)],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  helpers.push(busy);
  let busyOut = '';
  busy.stdout!.on('data', (d) => { busyOut += d; });
  busy.stderr!.on('data', (d) => { busyOut += d; });
  const busyDone = new Promise<void>((r) => busy.once('close', () => r()));
  let client: Record<string, number> = {};
  let probe: Promise<{ code: number | null; stdout: string; stderr: string }> | null = null;
  let startedAt = 0;
  const startProbe = () => {
    probe ??= runIn(env.dst, [...AGENT, 'probe', env.dst.addr, String(PORT), '120000'], { timeoutMs: 130_000 });
  };
  const sameHost = env.src.netnsPath === env.dst.netnsPath;

  return {
    pid,
    async beforeMigration() {
      if (busy.pid) signal(busy.pid, 'SIGTERM');
      await busyDone;
      try { client = lastJson(busyOut); } catch { throw new Error(`memcached client: ${busyOut.trim().slice(-200)}`); }
      // Wait until memcached has closed its side: an open connection would make CRIU refuse to dump.
      for (let i = 0; i < 200; i++) {
        const ss = await runIn(env.src, ['ss', '-Htan', `sport = :${PORT}`]);
        const states = ss.stdout.trim().split('\n').filter(Boolean).map((l) => l.split(/\s+/)[0]);
        if (states.every((s) => s === 'LISTEN' || s === 'TIME-WAIT')) {
          startedAt = performance.timeOrigin + performance.now();
          if (!sameHost) startProbe();
          return;
        }
        await sleep(5);
      }
      throw new Error('memcached still has connections open after its client left');
    },
    onRunning: startProbe,
    async verify(): Promise<Verdict> {
      startProbe();
      const p = await probe!;
      if (p.code !== 0) return { ok: false, pauseMs: null, detail: `no reply from the destination: ${p.stderr.trim()}` };
      const pauseMs = lastJson(p.stdout).firstReplyAt - startedAt;
      const c = await runIn(env.dst, [...AGENT, 'check', env.dst.addr, String(PORT), String(items), String(VALUE_SIZE)], { timeoutMs: 300_000 });
      if (c.code !== 0) return { ok: false, pauseMs, detail: `check failed: ${c.stderr.trim()}` };
      const r = lastJson(c.stdout);
      const ok = r.bad === 0 && r.missing === 0 && client.bad === 0;
      return {
        ok,
        pauseMs,
        detail: ok ? `${items} items verified, client did ${client.ops} ops before the switchover`
          : `${r.bad} wrong, ${r.missing} missing of ${items} items (first ${r.firstBad}); client saw ${client.bad} bad values`,
      };
    },
    stop: (restoredPid?: number) => stopAll(restoredPid),
  };
}
