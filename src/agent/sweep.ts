// What a destination agent that died left behind, found and removed when the
// next one starts (`serve`):
// - session directories in --dir: every one, since one agent owns a --dir
//   (claimDir refuses a second; the claim lives in /run/phaul-fast) — except while a process still uses it (a
//   hybrid fill outlives its agent and removes its directories itself);
// - page stores (phaul-fast-store-PID-*) whose creating agent PID is dead and
//   that no process uses;
// - restored copies still stopped: a copy is resumed only on `commit`, so a
//   stopped one never ran; its source kills the original only after our
//   `running`, which a dead agent never sent. Killing it is always safe: the
//   workload lives on at the source (running, or stopped and "in doubt" with
//   the command to resolve it in migrate's message) — unless the session's
//   outcome record says `committed` (outcomes.ts): then the agent died between
//   deciding to resume it and its SIGCONT, the source may have killed its
//   original, and the copy is resumed instead.
// - claims on a --dir (/run/phaul-fast/serve-*.pid) of agents that are dead.
// Each session directory records its stopped copy (pid and start time) in
// RESTORED_FILE, so a recycled pid is never hit.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PhaulError } from '../errors';
import { isAlive, procState, signalAll, startTime, treePids } from './process-tree';
import { pruneOutcomes, readOutcome, recordOutcome } from './outcomes';
import { dirKey, runPath } from './run-dir';

export const RESTORED_FILE = 'restored-stopped.json';
const SESSION_DIR = /^[0-9a-f]{24}$/;
export const STORE_PREFIX = `phaul-fast-store-${process.pid}-`;
const STORE_NAME = /^phaul-fast-store-(\d+)-/;

/** Where the claim on a --dir is kept: outside it, so the directory holds only sessions. */
function ownerFile(dir: string): string {
  return runPath(`serve-${dirKey(dir)}.pid`);
}

/** Claims dir for this agent; refuses if another live agent holds it. */
export function claimDir(dir: string): void {
  const owner = ownerFile(dir);
  let other = 0;
  try {
    other = Number(fs.readFileSync(owner, 'utf8').trim());
  } catch { /* unclaimed */ }
  if (other && other !== process.pid && isAlive(other) && /node|phaul/.test(comm(other)))
    throw new PhaulError('usage', `--dir ${dir} is in use by another phaul-fast serve (pid ${other}): give each agent its own --dir`);
  fs.writeFileSync(owner, `${process.pid}\n`);
}

/**
 * Removes the claims (serve-*.pid) of agents that died without giving them up
 * (a SIGKILL), whatever --dir they were for: they would pile up in
 * /run/phaul-fast. A claim whose pid is alive and an agent's stays. Returns how many went.
 */
export function sweepDeadClaims(): number {
  const run = runPath('');
  let n = 0;
  for (const name of entries(run).filter((x) => /^serve-[0-9a-f]+\.pid$/.test(x))) {
    const f = path.join(run, name);
    try {
      const pid = Number(fs.readFileSync(f, 'utf8').trim());
      if (Number.isInteger(pid) && pid > 1 && isAlive(pid) && /node|phaul/.test(comm(pid))) continue;
      fs.rmSync(f, { force: true });
      n++;
    } catch { /* gone meanwhile */ }
  }
  return n;
}

/** Gives up this agent's claim on dir (at close). */
export function releaseDir(dir: string): void {
  try {
    const owner = ownerFile(dir);
    if (Number(fs.readFileSync(owner, 'utf8').trim()) === process.pid) fs.rmSync(owner, { force: true });
  } catch { /* not claimed */ }
}

function comm(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}

/** Paths under any of `roots` that a live process has open, mapped or as its cwd. */
function pathsInUse(roots: string[]): Set<string> {
  const used = new Set<string>();
  const note = (p: string) => { for (const r of roots) if (p === r || p.startsWith(r + '/')) used.add(r); };
  let pids: string[] = [];
  try {
    pids = fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p));
  } catch { return used; }
  for (const pid of pids) {
    try {
      note(fs.readlinkSync(`/proc/${pid}/cwd`));
      for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
        try { note(fs.readlinkSync(`/proc/${pid}/fd/${fd}`)); } catch { /* closed meanwhile */ }
      }
      for (const line of fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
        const i = line.indexOf('/');
        if (i >= 0) note(line.slice(i).replace(/ \(deleted\)$/, ''));
      }
    } catch { /* gone, or not ours to read */ }
  }
  return used;
}

export interface SweepResult {
  sessionDirs: number;
  stores: number;
  stoppedCopies: number;
  /** Copies found stopped whose commit was recorded: resumed. */
  resumedCopies: number;
}

/** Removes the leftovers of dead agents (see the top of this file); returns what it removed. */
export function sweepLeftovers(dir: string, storeRoots: string[]): SweepResult {
  const res: SweepResult = { sessionDirs: 0, stores: 0, stoppedCopies: 0, resumedCopies: 0 };
  const sessions = entries(dir).filter((n) => SESSION_DIR.test(n)).map((n) => path.join(dir, n));
  const stores: string[] = [];
  for (const root of storeRoots) {
    for (const n of entries(root)) {
      const m = STORE_NAME.exec(n);
      if (m && Number(m[1]) !== process.pid && !isAlive(Number(m[1]))) stores.push(path.join(root, n));
    }
  }
  for (const s of sessions) {
    const done = settleStoppedCopy(dir, s);
    if (done === 'killed') res.stoppedCopies++;
    if (done === 'resumed') res.resumedCopies++;
  }
  pruneOutcomes(dir);
  const used = pathsInUse([...sessions, ...stores]);
  for (const s of sessions) {
    if (used.has(s)) continue;
    fs.rmSync(s, { recursive: true, force: true });
    res.sessionDirs++;
  }
  for (const s of stores) {
    if (used.has(s)) continue;
    fs.rmSync(s, { recursive: true, force: true });
    res.stores++;
  }
  return res;
}

function entries(dir: string): string[] {
  try {
    return fs.readdirSync(dir);
  } catch {
    return [];
  }
}

/**
 * The copy a session directory says it left stopped, if it is still that
 * process and still stopped: resumed if its commit is on record, else killed
 * (and recorded as aborted).
 */
function settleStoppedCopy(dir: string, sessionDir: string): 'killed' | 'resumed' | undefined {
  let rec: { pid?: unknown; startTime?: unknown };
  try {
    rec = JSON.parse(fs.readFileSync(path.join(sessionDir, RESTORED_FILE), 'utf8'));
  } catch {
    return undefined;
  }
  const pid = rec.pid;
  if (typeof pid !== 'number' || !Number.isInteger(pid) || pid < 2) return undefined;
  if (startTime(pid) !== rec.startTime || procState(pid) !== 'T') return undefined;
  const id = path.basename(sessionDir);
  if (readOutcome(dir, id)?.outcome === 'committed') {
    signalAll(treePids(pid), 'SIGCONT');
    return 'resumed';
  }
  signalAll(treePids(pid), 'SIGKILL');
  recordOutcome(dir, id, { outcome: 'aborted', pid, startTime: rec.startTime as number });
  return 'killed';
}

/** Records the restored copy of a session as stopped (see killStoppedCopy); forget it once resumed. */
export function recordStoppedCopy(sessionDir: string, pid: number): void {
  fs.writeFileSync(path.join(sessionDir, RESTORED_FILE), JSON.stringify({ pid, startTime: startTime(pid) }));
}

export function forgetStoppedCopy(sessionDir: string): void {
  fs.rmSync(path.join(sessionDir, RESTORED_FILE), { force: true });
}
