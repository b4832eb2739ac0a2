// test/workloads/forkwork.c's report, and a migration held between its last
// live scan and CRIU's freeze while forkwork keeps forking.
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { isAlive, sleep } from '../../src/testing/proc';

export interface ForkReport { ok: boolean; children: number; bad: number; seq: number }

/** forkwork's report after asking `pid` for one. */
export async function forkReport(pid: number, file: string): Promise<ForkReport> {
  const read = (): ForkReport | null => { try { return JSON.parse(fs.readFileSync(file, 'utf8')); } catch { return null; } };
  const before = read()?.seq ?? -1;
  process.kill(pid, 'SIGUSR1');
  const end = Date.now() + 10_000;
  for (;;) {
    const r = read();
    if (r && r.seq > before) return r;
    assert.ok(Date.now() < end && isAlive(pid), `no report from forkwork ${pid}`);
    await sleep(10);
  }
}

/**
 * runCli's options that stop the source once its rounds are over (the
 * test-only pause hook, src/agent/test-pause.ts) and let it go on to the
 * freeze `ms` later (creating `release`): the tree then surely holds
 * processes forked after the last live scan, and has lost some it tracked.
 */
export function holdBeforeFreeze(release: string, ms = 400): { env: Record<string, string>; onStderr: (err: string) => void } {
  let held = false;
  return {
    env: { PHAUL_FAST_TEST_PAUSE: `source:precopy:${release}` },
    onStderr: (err) => {
      if (held || !/test pause: source at precopy/.test(err)) return;
      held = true;
      setTimeout(() => fs.writeFileSync(release, ''), ms);
    },
  };
}

/** How many processes the source's log says appeared after its last live scan (0 if none). */
export function lateProcesses(stderr: string): number {
  const m = /(\d+) process\(es\) appeared after the last live scan/.exec(stderr);
  return m ? Number(m[1]) : 0;
}
