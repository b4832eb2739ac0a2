// TreeTracker: dirty tracking of a whole process tree. The uffd is per address
// space and fork children are not covered by their parent's, so every process
// gets its own DirtyTracker, and children that appear between rounds are
// picked up (their first set is a full copy, which they need anyway).
import * as fs from 'node:fs';

import { DirtyTracker, type DirtySet } from './dirty-tracker';
import { DirtyTrackingError } from './errors';
import { addon } from '../native';

export interface TreeScan {
  /** One dirty set per tracked process. */
  sets: Map<number, DirtySet>;
  /** Processes tracked from this round on (their set is a full copy). */
  added: number[];
  /** Processes gone since the previous round. */
  exited: number[];
  /** Processes that share the address space of a tracked one (vfork, CLONE_VM):
   *  pid -> the pid whose set covers it. */
  aliases: Map<number, number>;
  /** Scans with `frozen`: processes new since the last live scan, found but not tracked
   *  (their memory comes from what CRIU lists for them: PrecopyRun.sendRound). */
  untracked: number[];
}

/** Direct children of every thread of `pid` (empty when it is gone). */
export function childrenOf(pid: number): number[] {
  const out: number[] = [];
  let tids: string[];
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      for (const c of fs.readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').split(' ')) {
        const n = Number(c);
        if (n > 0) out.push(n);
      }
    } catch {
      // thread exited meanwhile
    }
  }
  return out;
}

function alive(pid: number): boolean {
  return fs.existsSync(`/proc/${pid}`);
}

/** Gone, a zombie (exited, not reaped yet), or past giving up its memory on the way out. */
export function exiting(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // After the command name: state is field 3, vsize field 23 (0 once exit released the address space).
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return f[0] === 'Z' || f[0] === 'X' || f[20] === '0';
  } catch {
    return true;
  }
}

export class TreeTracker {
  readonly root: number;
  private trackers = new Map<number, DirtyTracker>();
  private aliases = new Map<number, number>();
  private closed = false;

  constructor(root: number) {
    this.root = root;
  }

  /** Starts a tracker for every process of the tree. A process that cannot be
   *  tracked (e.g. it uses userfaultfd itself) fails the whole tree: the
   *  caller falls back for the tree (err.fallback). */
  async start(): Promise<number[]> {
    if (!alive(this.root)) throw new DirtyTrackingError('process-gone', this.root, `process ${this.root} not found`);
    return this.discover();
  }

  /** One round: picks up new processes, then scans every tracked one (see DirtyTracker.scan for
   *  `protect` and `sync`; without sync, no new process is picked up either). `frozen`: the tree
   *  is held by CRIU's ptrace, so a new process cannot get a tracker (ours is injected with
   *  ptrace): it is only listed in `untracked`. */
  async scan(opts: { protect?: boolean; sync?: boolean; frozen?: boolean } = {}): Promise<TreeScan> {
    if (this.closed) throw new DirtyTrackingError('failed', this.root, 'TreeTracker is closed');
    const untracked: number[] = [];
    const added = opts.sync === false ? [] : await this.discover(opts.frozen ? untracked : undefined);
    const sets = new Map<number, DirtySet>();
    const exited: number[] = [];
    const pids = [...this.trackers.keys()];
    const results = await Promise.allSettled(pids.map((p) => this.trackers.get(p)!.scan(opts)));
    for (let i = 0; i < pids.length; i++) {
      const pid = pids[i];
      const r = results[i];
      if (r.status === 'fulfilled') {
        sets.set(pid, r.value);
        continue;
      }
      const err = r.reason;
      // A child on its way out can fail a scan in other ways than process-gone (its maps or pagemap going).
      if (!(err instanceof DirtyTrackingError) || (err.reason !== 'process-gone' && (pid === this.root || !exiting(pid)))) {
        this.close();
        throw err;
      }
      this.trackers.get(pid)!.close();
      this.trackers.delete(pid);
      if (alive(pid)) {
        // execve replaced its address space: track the new one from scratch.
        const t = await this.startOne(pid);
        if (t) {
          sets.set(pid, await t.scan(opts));
          added.push(pid);
          continue;
        }
      }
      exited.push(pid);
    }
    for (const [a, owner] of this.aliases) if (!alive(a) || !this.trackers.has(owner)) this.aliases.delete(a);
    return { sets, added, exited, aliases: new Map(this.aliases), untracked };
  }

  pids(): number[] {
    return [...this.trackers.keys()];
  }

  tracker(pid: number): DirtyTracker | undefined {
    return this.trackers.get(pid);
  }

  close(): void {
    this.closed = true;
    for (const t of this.trackers.values()) t.close();
    this.trackers.clear();
  }

  // Every process below the root and below each tracked process (orphans
  // reparented away from the tree stay tracked, and so do their children).
  private tree(): number[] {
    const seen = new Set<number>();
    const todo = [this.root, ...this.trackers.keys()];
    while (todo.length) {
      const p = todo.pop()!;
      if (seen.has(p) || !alive(p)) continue;
      seen.add(p);
      todo.push(...childrenOf(p));
    }
    return [...seen].sort((a, b) => a - b);
  }

  /** New processes get a tracker, or with `untracked` given, are only listed there. */
  private async discover(untracked?: number[]): Promise<number[]> {
    const added: number[] = [];
    for (const pid of this.tree()) {
      if (this.trackers.has(pid) || this.aliases.has(pid)) continue;
      const owner = this.sharesMmWith(pid);
      if (owner !== undefined) {
        this.aliases.set(pid, owner);
        continue;
      }
      if (untracked) untracked.push(pid);
      else if (await this.startOne(pid)) added.push(pid);
    }
    return added;
  }

  private sharesMmWith(pid: number): number | undefined {
    for (const p of this.trackers.keys()) {
      try {
        if (addon().sameMm(pid, p)) return p;
      } catch {
        // one of them is gone
      }
    }
    return undefined;
  }

  private async startOne(pid: number): Promise<DirtyTracker | null> {
    const t = new DirtyTracker(pid);
    try {
      await t.start();
    } catch (e) {
      t.close();
      if (e instanceof DirtyTrackingError && e.reason === 'process-gone') return null;
      // A child that exits while we attach needs no tracking, but fails in
      // other ways: PTRACE_SEIZE refuses a zombie (EPERM), and once its address
      // space is released there is no syscall instruction to borrow. Its state
      // says so by the time the failure comes back; a short wait covers a task
      // between the two steps of its exit.
      if (pid !== this.root) {
        for (let i = 0; i < 10; i++) {
          if (exiting(pid)) return null;
          await new Promise((r) => setTimeout(r, 50));
        }
      }
      throw e;
    }
    this.trackers.set(pid, t);
    return t;
  }
}
