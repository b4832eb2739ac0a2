// What the destination decided for each session, kept on disk so that it can
// still answer `phaul-fast resolve` after the session ended or the agent died
// (src/agent/resolve.ts). `committed` is written *before* the copy gets its
// SIGCONT, so a copy that may have run always has it: an agent that dies in
// between leaves a committed copy stopped, and the next agent's sweep resumes
// it (sweep.ts) instead of killing it. `aborted` is written once a copy that
// never ran is gone. A lazily filled copy is `committed` with `filling` until
// its memory is all in (then plain `committed`), or `unfilled` if it never
// will be: the fill failed and the copy is stopped (unfilled.ts). A session with no record never had a copy resumed here.
// Records live outside the --dir (which holds only sessions), in
// /run/phaul-fast/outcomes-KEY/ID.json with KEY naming the --dir (run-dir.ts),
// one small file each, pruned after OUTCOME_KEEP_MS or by a reboot (which
// ends every copy they could name).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { dirKey, runPath } from './run-dir';

export type Outcome = 'committed' | 'aborted' | 'unfilled';

export interface OutcomeRecord {
  outcome: Outcome;
  /** The copy's root (committed; aborted when there was one) and its start time. */
  pid?: number;
  startTime?: number;
  /** committed, hybrid and postcopy: its memory was still being filled (a later record says how that ended). */
  filling?: boolean;
  at: number;
}

/** How long a decision stays on record: long enough for anyone to run resolve. */
export const OUTCOME_KEEP_MS = 7 * 24 * 3600_000;
const SESSION_ID = /^[0-9a-f]{24}$/;

function outcomesDir(dir: string): string {
  return runPath(`outcomes-${dirKey(dir)}`);
}

/** Names the --dir an outcomes directory belongs to, so that any agent can drop it once that --dir is gone. */
const OWNER = 'dir';

/**
 * Records the decision for session `id` of the agent whose --dir is `dir` (atomic: a new file renamed in place).
 * Not fsync'd: a record must outlive the agent that wrote it (the page cache does), not the host: a host
 * that goes down ends every copy its records name. `committed` is written inside the pause, between the
 * source's commit and the copy's SIGCONT, where an fsync on a busy disk cost 3-160 ms.
 */
export function recordOutcome(dir: string, id: string, rec: Omit<OutcomeRecord, 'at'>): void {
  if (!SESSION_ID.test(id)) return;
  const d = outcomesDir(dir);
  fs.mkdirSync(d, { recursive: true, mode: 0o700 });
  if (!fs.existsSync(path.join(d, OWNER))) fs.writeFileSync(path.join(d, OWNER), fs.realpathSync(dir));
  const file = path.join(d, `${id}.json`);
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify({ ...rec, at: Date.now() }), { mode: 0o600 });
  fs.renameSync(tmp, file);
}

/** The decision recorded for session `id`, or undefined (none, or unreadable). */
export function readOutcome(dir: string, id: string): OutcomeRecord | undefined {
  if (!SESSION_ID.test(id)) return undefined;
  try {
    const r = JSON.parse(fs.readFileSync(path.join(outcomesDir(dir), `${id}.json`), 'utf8')) as OutcomeRecord;
    return r.outcome === 'committed' || r.outcome === 'aborted' || r.outcome === 'unfilled' ? r : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Removes this --dir's records older than OUTCOME_KEEP_MS (and temp files of
 * dead writers), and the records of every --dir that no longer exists (no
 * agent can serve it again); returns how many records went.
 */
export function pruneOutcomes(dir: string, now = Date.now()): number {
  const mine = outcomesDir(dir);
  let n = 0;
  for (const o of fs.readdirSync(path.dirname(mine)).filter((x) => x.startsWith('outcomes-')).map((x) => path.join(path.dirname(mine), x))) {
    let owner = '';
    try { owner = fs.readFileSync(path.join(o, OWNER), 'utf8'); } catch { /* an older or partly written directory */ }
    if (o !== mine && owner && !fs.existsSync(owner)) {
      n += Math.max(0, fs.readdirSync(o).length - 1);
      fs.rmSync(o, { recursive: true, force: true });
    }
  }
  let names: string[] = [];
  try {
    names = fs.readdirSync(mine);
  } catch {
    return n;
  }
  for (const name of names) {
    const f = path.join(mine, name);
    try {
      if (name !== OWNER && (name.endsWith('.tmp') || now - fs.statSync(f).mtimeMs > OUTCOME_KEEP_MS)) {
        fs.rmSync(f, { force: true });
        n++;
      }
    } catch { /* gone meanwhile */ }
  }
  return n;
}
