// A lazily filled copy (hybrid, postcopy) whose memory will never all
// arrive: its fill failed after it ran (postcopy: the source went away; the
// rest of its memory exists only in the original, stopped at the source), so
// it was stopped, by its agent or, if that died, by its lazy-fill server
// (src/transport/lazy-fill-process.ts), which then holds the copy's
// userfaultfds forever. It cannot run again: the only way to one running copy
// is to kill it and resume the original, losing what the copy did since the
// switchover. The destination answers `unfilled` for it (docs/PROTOCOL.md,
// "Resolving a session in doubt") and kills it on `abort`, which only the
// source side's `phaul-fast resolve` sends (it then resumes the original).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { isAlive, procState, signalAll, startTime, treePids, waitGone } from './process-tree';
import { type OutcomeRecord, recordOutcome } from './outcomes';

/** The copy an outcome record names, if it is still that process and stopped for lack of its memory. */
export function unfilledCopy(rec: OutcomeRecord | undefined): number | undefined {
  if (!rec?.pid || !(rec.outcome === 'unfilled' || (rec.outcome === 'committed' && rec.filling))) return undefined;
  if (startTime(rec.pid) !== rec.startTime || procState(rec.pid) !== 'T') return undefined;
  return rec.pid;
}

/** Whether an outcome record says a copy ran on incomplete memory and is gone by now (nothing runs). */
export function unfilledAndGone(rec: OutcomeRecord | undefined): boolean {
  return rec?.outcome === 'unfilled' && (!rec.pid || !isAlive(rec.pid) || startTime(rec.pid) !== rec.startTime);
}

/** Lazy-fill servers working in sessionDir (their cwd): an orphan holds a stopped copy's userfaultfds. */
function fillServersIn(sessionDir: string): number[] {
  const out: number[] = [];
  for (const p of fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      if (fs.readlinkSync(`/proc/${p}/cwd`) === sessionDir && fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('lazy-fill-process'))
        out.push(Number(p));
    } catch { /* gone, or not ours to read */ }
  }
  return out;
}

/** The page stores (postcopy: the pages file's directory) a process has open or mapped. */
function storesUsedBy(pid: number): string[] {
  const paths: string[] = [];
  try {
    for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
      try { paths.push(fs.readlinkSync(`/proc/${pid}/fd/${fd}`)); } catch { /* closed meanwhile */ }
    }
    for (const line of fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
      const i = line.indexOf('/');
      if (i >= 0) paths.push(line.slice(i).replace(/ \(deleted\)$/, ''));
    }
  } catch { /* gone */ }
  const stores = new Set<string>();
  for (const p of paths) {
    const m = /^(.*\/phaul-fast-store-\d+-[^/]+)(\/|$)/.exec(p);
    if (m) stores.add(m[1]);
  }
  return [...stores];
}

/**
 * Kills the stopped copy `pid` of session `id` and, if its agent died, the
 * lazy-fill server left holding it and the session's directory; records the
 * session `aborted` (no copy runs here any more).
 */
export async function discardUnfilledCopy(dir: string, id: string, pid: number): Promise<void> {
  const sessionDir = path.join(dir, id);
  signalAll(treePids(pid), 'SIGKILL');
  await waitGone(pid, 5000);
  const servers = fs.existsSync(sessionDir) ? fillServersIn(sessionDir) : [];
  const stores = new Set(servers.flatMap(storesUsedBy));
  signalAll(servers, 'SIGKILL');
  for (const s of servers) await waitGone(s, 5000);
  // An orphan server would have removed these itself had its fill ended (its agent is gone).
  if (servers.length) for (const d of [sessionDir, ...stores]) fs.rmSync(d, { recursive: true, force: true });
  recordOutcome(dir, id, { outcome: 'aborted', pid });
}
