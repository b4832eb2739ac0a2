// test/workloads/forkwork.c's report, asked for with SIGUSR1.
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

