// memwork in the benchmark: the pause is the longest gap its own loop saw,
// measured from a reset right before the migration until after the last page
// arrived (post-copy stalls count), and every page is checked on the destination.
import { startMemWorkload, type MemWorkload } from '../../src/testing/workload';
import type { WorkloadSpec } from '../matrix';
import type { BenchWorkload, Verdict, WorkloadEnv } from './types';

export async function startMemwork(spec: WorkloadSpec, env: WorkloadEnv): Promise<BenchWorkload> {
  const w: MemWorkload = await startMemWorkload({
    mib: spec.memMiB,
    writeMBps: spec.writeMBps,
    netns: env.src.netnsPath ?? undefined,
    reportDir: env.dir,
  });
  return {
    pid: w.pid,
    beforeMigration: () => w.resetGap(),
    onRunning: (pid) => w.adopt(pid),
    async verify(restoredPid: number): Promise<Verdict> {
      const r = await w.report(restoredPid);
      return {
        ok: r.ok,
        pauseMs: r.maxGapMs,
        ...(r.maxGapEndMs !== undefined ? { pauseEndMs: r.maxGapEndMs } : {}),
        detail: r.ok ? `${r.pages} pages verified` : `${r.badPages} of ${r.pages} pages wrong, first ${r.firstBad}`,
      };
    },
    stop: (restoredPid?: number) => (restoredPid ? w.stop(restoredPid) : w.stop()),
  };
}
