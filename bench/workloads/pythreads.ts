// A multi-threaded CPython process as a benchmark workload (pythreads.py: 4
// threads, each rewriting its share of the data at writeMBps / 4): a real
// interpreter, with its threads, allocator and signal handling, that speaks
// memwork's protocol, so the pause is the longest gap any of its threads saw
// and every page is checked on the destination, as for memwork.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { startMemWorkload } from '../../src/testing/workload';
import { PACKAGE_ROOT } from '../../src/package-root';
import type { WorkloadSpec } from '../matrix';
import type { BenchWorkload, Verdict, WorkloadEnv } from './types';

const SCRIPT = path.join(PACKAGE_ROOT, 'bench', 'workloads', 'pythreads.py');
/** Debian's interpreter (scripts/setup.sh installs python3), not whatever a user's PATH puts first. */
const PYTHON = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
export const PY_THREADS = 4;

export async function startPythreads(spec: WorkloadSpec, env: WorkloadEnv): Promise<BenchWorkload> {
  const w = await startMemWorkload({
    mib: spec.memMiB,
    writeMBps: spec.writeMBps,
    threads: PY_THREADS,
    netns: env.src.netnsPath ?? undefined,
    reportDir: env.dir,
    program: { command: [PYTHON, SCRIPT], comm: 'python3' },
    startTimeoutMs: 60_000 + spec.memMiB * 100, // the interpreter fills its pages one by one
  });
  return {
    pid: w.pid,
    beforeMigration: () => w.resetGap(),
    onRunning: (pid) => w.adopt(pid),
    async verify(restoredPid: number): Promise<Verdict> {
      const r = await w.report(restoredPid, 60_000 + spec.memMiB * 100);
      return {
        ok: r.ok,
        pauseMs: r.maxGapMs,
        detail: r.ok ? `${r.pages} pages of ${PY_THREADS} threads verified` : `${r.badPages} of ${r.pages} pages wrong, first ${r.firstBad}`,
      };
    },
    stop: (restoredPid?: number) => (restoredPid ? w.stop(restoredPid) : w.stop()),
  };
}
