// CPU a migration spends inside the workload's own tasks, which no agent's
// rusage includes: at the source, CRIU's parasite (injected into the frozen
// tasks: it collects their state and, for CRIU's page server, vmsplices every
// page into pipes); at the destination, the restored tasks' own CPU when the
// migration ends (CRIU's restore runs its last stage, the restorer, in them,
// and reads every page of a non-lazy restore into their memory there: ~0.5 s
// per GiB here, against ~0.02 s for `criu restore` itself). Every strategy
// is measured the same way (docs/BENCH.md, "CPU s").
import * as fs from 'node:fs';

/** user+system seconds of the process pid (all its threads, not its children); null when it is gone. */
export function ownCpuSeconds(pid: number): number | null {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    // Fields after ')' start at field 3 (state): utime is field 14, stime 15 (USER_HZ = 100).
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return null;
  }
}

function stateOf(pid: number): string | null {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return s.charAt(s.lastIndexOf(')') + 2);
  } catch {
    return null;
  }
}

/** Poll period: CPU times move in 10 ms ticks (USER_HZ), so a finer poll adds load, not precision. */
const POLL_MS = 5;

/**
 * Watches the source's workload root every POLL_MS: the CPU it used from
 * the moment it stopped running (CRIU's ptrace stop, 't'/'T') until it was
 * last seen (the source copy is killed after the move). It does not run in
 * that window, so whatever it used was CRIU's parasite. stop() returns seconds.
 */
export function watchFrozenCpu(pid: number): { stop(): number } {
  let atFreeze: number | null = null;
  let last: number | null = null;
  const poll = () => {
    const st = stateOf(pid);
    if (st === null || st === 'Z') return;
    const cpu = ownCpuSeconds(pid);
    if (cpu === null) return;
    if (atFreeze === null && (st === 't' || st === 'T')) atFreeze = cpu;
    if (atFreeze !== null) last = cpu;
  };
  const timer = setInterval(poll, POLL_MS);
  timer.unref();
  return {
    stop() {
      poll();
      clearInterval(timer);
      return atFreeze !== null && last !== null ? Math.max(0, last - atFreeze) : 0;
    },
  };
}
