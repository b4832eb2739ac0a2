// Process-tree helpers over /proc: which pids make up a tree, signalling all of
// them, and waiting until a process is really gone (a zombie counts as gone:
// PID 1 on some machines reaps late).
import * as fs from 'node:fs';
import { childrenOf } from '../memory/tree-tracker';

/** Every pid of the tree rooted at `root` (root first), following all threads' children. */
export function treePids(root: number): number[] {
  const out: number[] = [];
  const seen = new Set<number>();
  const queue = [root];
  while (queue.length) {
    const pid = queue.shift()!;
    if (seen.has(pid)) continue;
    seen.add(pid);
    if (!fs.existsSync(`/proc/${pid}/task`)) continue; // gone
    out.push(pid);
    queue.push(...childrenOf(pid));
  }
  return out;
}

/** The state letter from /proc/PID/stat (R, S, T, Z, ...), or undefined if gone. */
export function procState(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  } catch {
    return undefined;
  }
}

/** Alive means it exists and is not a zombie. */
export function isAlive(pid: number): boolean {
  const s = procState(pid);
  return s !== undefined && s !== 'Z' && s !== 'X';
}

export function signalAll(pids: number[], sig: NodeJS.Signals): void {
  for (const p of pids) {
    try {
      process.kill(p, sig);
    } catch { /* already gone */ }
  }
}

export async function waitGone(pid: number, timeoutMs = 5000): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (!isAlive(pid)) return true;
    await new Promise((r) => setTimeout(r, 10));
  }
  return !isAlive(pid);
}

/** The process's start time (clock ticks since boot): with the pid, it names one process for good. */
export function startTime(pid: number): number | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
  } catch {
    return undefined;
  }
}

/** Anonymous and shared memory the tree holds (RssAnon + RssShmem), in bytes:
 *  about what a restore writes and a page store must hold. */
export function treeMemoryBytes(root: number): number {
  let kb = 0;
  for (const pid of treePids(root)) {
    try {
      const st = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
      for (const m of st.matchAll(/^Rss(?:Anon|Shmem):\s+(\d+) kB/gm)) kb += Number(m[1]);
    } catch { /* exited */ }
  }
  return kb * 1024;
}
