// Slows a process tree down so pre-copy can converge (QEMU's auto-converge, for
// processes): throttle pct = the share of time the tree may not run.
//
// Two mechanisms, chosen at the first set():
// - cgroup CPU quota (v2 cpu.max, else v1 cpu.cfs_quota_us), used only when
//   the tree already has a cgroup of its own: every process of that cgroup and
//   its descendants is in the tree and vice versa. We never move processes:
//   a move changes the cgroup CRIU records and recreates on restore, and moving
//   a container's processes out of its cgroup would escape its limits. The
//   quota is (100-pct)% of the CPU the tree used before the first step. It is
//   smooth and invisible to the workload; but while set it is a property of
//   the cgroup that CRIU may dump, so release() before the dump.
// - otherwise SIGSTOP/SIGCONT duty cycling over the tree's pids (stopped pct%
//   of each period). Works on any tree, but is visible: a parent outside the
//   tree sees stop/continue through waitpid(WUNTRACED) and SIGCHLD (a shell
//   marks its job stopped), SIGCONT handlers run every period, and on Linux some
//   blocking calls (epoll_wait, semop, sigtimedwait, ...) fail with EINTR after
//   a stop even without handlers. A process stopped at dump time is dumped and
//   restored stopped: release() before freezing. Our timers run on this event
//   loop: a blocked loop stretches the stopped part (more throttle, never less).
//
// release() is idempotent and leaves every process we stopped running; it also
// runs when this process exits (uncaught exception, process.exit), though a
// SIGKILL of this process cannot be caught: a stopped window then stays.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PhaulError } from '../errors';
import { procState, startTime, treePids } from './process-tree';

export type ThrottleMethod = 'cgroup' | 'signals';

export interface ThrottleOptions {
  /** 'auto' (default): the cgroup quota when it can be used safely, else signals. */
  method?: 'auto' | ThrottleMethod;
  /** Duty-cycle / quota period. Default 100 ms. */
  periodMs?: number;
}

interface CgroupKnob {
  /** cpu.max (v2) or cpu.cfs_quota_us (v1). */
  file: string;
  v2: boolean;
  periodUs: number;
  /** Limit already set on the cgroup, in µs per period (Infinity = none). */
  origQuotaUs: number;
  /** File contents to write back on release. */
  orig: string;
  /** What we last wrote (release restores only if it still holds this). */
  written?: string;
}

const active = new Set<WorkloadThrottle>();
let exitHooked = false;

export class WorkloadThrottle {
  private current = 0;
  private mode: ThrottleMethod | null = null;
  private why = '';
  private knob: CgroupKnob | null = null;
  private readonly periodMs: number;
  // Duty cycle: processes we stopped this period (pid -> start time, so a
  // recycled pid is never signalled), and every process we ever stopped
  // (release resumes those still in T, whatever happened since).
  private readonly stoppedNow = new Map<number, number>();
  private readonly touched = new Map<number, number>();
  private timer: NodeJS.Timeout | null = null;
  // Cgroup quota sizing: the tree's CPU time when this object was made.
  private readonly sample: { at: number; seconds: number };
  private baselineCpus: number | undefined;

  /** Make it early (e.g. when pre-copy starts): the cgroup quota is sized from the CPU the tree uses meanwhile. */
  constructor(readonly rootPid: number, private readonly opts: ThrottleOptions = {}) {
    this.sample = { at: performance.now(), seconds: treeCpu(rootPid).seconds };
    this.periodMs = opts.periodMs ?? 100;
    if (!(this.periodMs >= 10 && this.periodMs <= 10_000)) throw new PhaulError('usage', `throttle period must be 10..10000 ms, got ${this.periodMs}`);
  }

  /** Current throttle (0 = none). */
  get pct(): number {
    return this.current;
  }

  /** Mechanism in use, null while released. */
  get method(): ThrottleMethod | null {
    return this.mode;
  }

  /** Why that mechanism (the cgroup used, or why not one). */
  get detail(): string {
    return this.why;
  }

  /** Runs the tree at most (100 - pct)% of the time; 0 releases. pct in [0, 99]. */
  set(pct: number): void {
    if (!(Number.isInteger(pct) && pct >= 0 && pct <= 99)) throw new PhaulError('usage', `throttle must be an integer 0..99 %, got ${pct}`);
    if (pct === 0) {
      this.release();
      return;
    }
    if (this.mode === null) {
      if (procState(this.rootPid) === undefined) throw new PhaulError('notFound', `cannot throttle pid ${this.rootPid}: no such process`);
      this.choose();
      active.add(this);
      if (!exitHooked) {
        exitHooked = true;
        process.on('exit', () => { for (const t of [...active]) t.release(); });
      }
    }
    try {
      if (this.mode === 'cgroup') this.writeQuota(pct);
      this.current = pct;
      if (this.mode === 'signals' && !this.timer) this.stopPhase();
    } catch (err) {
      this.release();
      throw err;
    }
  }

  /** Lets the whole tree run again. Never throws; safe to call any number of times. */
  release(): void {
    active.delete(this);
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.current = 0;
    if (this.mode === 'cgroup' && this.knob) {
      const k = this.knob;
      try {
        // Someone else changed it meanwhile: theirs now, leave it.
        if (k.written !== undefined && readKnob(k) === k.written) fs.writeFileSync(k.file, k.orig);
      } catch { /* cgroup gone with its processes */ }
      this.knob = null;
    }
    if (this.mode === 'signals') {
      for (const [pid, st] of this.stoppedNow) cont(pid, st);
      this.stoppedNow.clear();
      // A stop we sent can come back later: the dirty tracker's syscall
      // injection holds signals that arrive while it has a thread seized and
      // re-sends them on detach. Resume any of ours found in T for a moment.
      const touched = new Map(this.touched);
      const sweep = (left: number) => {
        for (const [pid, st] of touched) if (procState(pid) === 'T') cont(pid, st);
        if (left > 0) setTimeout(sweep, 50, left - 1).unref();
      };
      sweep(10);
      this.touched.clear();
    }
    this.mode = null;
  }

  private choose(): void {
    const want = this.opts.method ?? 'auto';
    if (want === 'signals') {
      this.mode = 'signals';
      this.why = 'SIGSTOP/SIGCONT duty cycle (asked for)';
      return;
    }
    const found = findOwnCgroup(this.rootPid);
    if (typeof found === 'string') {
      if (want === 'cgroup') throw new PhaulError('unavailable', `cannot throttle pid ${this.rootPid} with a cgroup: ${found}`);
      this.mode = 'signals';
      this.why = `SIGSTOP/SIGCONT duty cycle (no cgroup quota: ${found})`;
      return;
    }
    this.knob = found;
    this.mode = 'cgroup';
    this.why = `cgroup quota ${found.file}`;
  }

  private writeQuota(pct: number): void {
    const k = this.knob!;
    // A quota caps the whole cgroup, not each thread: sized from the threads'
    // count it would not bite on a tree of one busy thread and many idle ones.
    // So: (100-pct)% of the CPU the tree used before we throttled it. Measured
    // once: usage under a throttle would compound the next step.
    this.baselineCpus ??= this.usageSinceStart();
    // Never looser than a limit already on the cgroup; kernel minimum 1 ms.
    const quota = Math.max(1000, Math.min(Math.round(((100 - pct) / 100) * this.baselineCpus * k.periodUs), k.origQuotaUs));
    fs.writeFileSync(k.file, k.v2 ? `${quota} ${k.periodUs}` : `${quota}`);
    k.written = readKnob(k);
  }

  /** CPUs the tree used since this object was made (>= 200 ms ago), else its processes' lifetime average. */
  private usageSinceStart(): number {
    const now = treeCpu(this.rootPid);
    const dt = (performance.now() - this.sample.at) / 1000;
    // A process that exited since takes its time with it: then the lifetime average.
    const used = now.seconds - this.sample.seconds;
    const cpus = dt >= 0.2 && used >= 0 ? used / dt : now.lifetimeCpus;
    return Math.min(cpus, os.availableParallelism());
  }

  private stopPhase(): void {
    this.timer = null;
    if (this.mode !== 'signals') return;
    const pids = treePids(this.rootPid);
    if (pids.length === 0) {
      this.release(); // the tree is gone
      return;
    }
    for (const pid of pids) {
      const st = startTime(pid);
      if (st === undefined || this.stoppedNow.has(pid)) continue;
      // Already stopped by someone else (T), or held by a tracer (t: the dirty
      // tracker injecting, a debugger): not ours to stop or, later, resume.
      const s = procState(pid);
      if (s === 'T' || s === 't') continue;
      try {
        process.kill(pid, 'SIGSTOP');
        this.stoppedNow.set(pid, st);
        this.touched.set(pid, st);
      } catch { /* exited */ }
    }
    const stopMs = (this.periodMs * this.current) / 100;
    this.timer = setTimeout(() => this.contPhase(), stopMs);
    this.timer.unref();
  }

  private contPhase(): void {
    this.timer = null;
    if (this.mode !== 'signals') return;
    for (const [pid, st] of this.stoppedNow) cont(pid, st);
    this.stoppedNow.clear();
    const runMs = (this.periodMs * (100 - this.current)) / 100;
    this.timer = setTimeout(() => this.stopPhase(), runMs);
    this.timer.unref();
  }
}

/** CPU seconds the tree's live processes used, and the sum of their lifetime averages (in CPUs). */
function treeCpu(root: number): { seconds: number; lifetimeCpus: number } {
  let seconds = 0;
  let lifetimeCpus = 0;
  let uptime = 0;
  try { uptime = Number(fs.readFileSync('/proc/uptime', 'utf8').split(' ')[0]); } catch { /* no /proc? */ }
  for (const pid of treePids(root)) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // From the state (field 3): utime 14, stime 15, starttime 22; clock ticks of 1/100 s (USER_HZ).
      const s = (Number(f[11]) + Number(f[12])) / 100;
      const age = uptime - Number(f[19]) / 100;
      seconds += s;
      if (age > 0) lifetimeCpus += s / age;
    } catch { /* gone */ }
  }
  return { seconds, lifetimeCpus };
}

function cont(pid: number, st: number): void {
  if (startTime(pid) !== st) return; // gone, or the pid now names another process
  try { process.kill(pid, 'SIGCONT'); } catch { /* exited */ }
}

function readKnob(k: CgroupKnob): string {
  return fs.readFileSync(k.file, 'utf8').trim();
}

/** The tree's own cgroup with a CPU quota knob, or why there is none. */
function findOwnCgroup(root: number): CgroupKnob | string {
  const pids = treePids(root).filter((p) => procState(p) !== 'Z');
  if (pids.length === 0) return 'the tree is gone';
  const mounts = cgroupMounts();
  const reasons: string[] = [];
  for (const v2 of [true, false]) {
    const mount = mounts.find((m) => (v2 ? m.v2 : m.controllers.includes('cpu')));
    if (!mount) { reasons.push(v2 ? 'no cgroup2 mount' : 'no cgroup v1 cpu mount'); continue; }
    const tag = v2 ? 'v2' : 'v1 cpu';
    const paths = new Set(pids.map((p) => cgroupOf(p, v2)));
    if (paths.size !== 1 || paths.has(null)) { reasons.push(`${tag}: the tree spans several cgroups`); continue; }
    const cg = [...paths][0]!;
    const rel = path.posix.relative(mount.root, cg);
    if (cg === '/' || rel === '' || rel.startsWith('..')) { reasons.push(`${tag}: the tree is in a root or unreachable cgroup (${cg})`); continue; }
    const dir = path.join(mount.dir, rel);
    const members = procsUnder(dir);
    const tree = new Set(pids);
    if (members === null) { reasons.push(`${tag}: cannot list ${dir}`); continue; }
    if (members.size !== tree.size || [...members].some((p) => !tree.has(p))) {
      reasons.push(`${tag}: ${cg} holds ${members.size} processes, the tree ${tree.size}`);
      continue;
    }
    try {
      if (v2) {
        const file = path.join(dir, 'cpu.max');
        const orig = fs.readFileSync(file, 'utf8').trim();
        const [q, per] = orig.split(/\s+/);
        fs.writeFileSync(file, orig); // may we write it? (a read-only or undelegated cgroupfs says no)
        return { file, v2, periodUs: Number(per), origQuotaUs: q === 'max' ? Infinity : Number(q), orig };
      }
      const file = path.join(dir, 'cpu.cfs_quota_us');
      const orig = fs.readFileSync(file, 'utf8').trim();
      const periodUs = Number(fs.readFileSync(path.join(dir, 'cpu.cfs_period_us'), 'utf8'));
      fs.writeFileSync(file, orig);
      return { file, v2, periodUs, origQuotaUs: Number(orig) < 0 ? Infinity : Number(orig), orig };
    } catch (err) {
      reasons.push(`${tag}: cannot use the CPU quota of ${cg} (${(err as NodeJS.ErrnoException).code ?? err})`);
    }
  }
  return reasons.join('; ');
}

interface CgroupMount { dir: string; root: string; v2: boolean; controllers: string[] }

function cgroupMounts(): CgroupMount[] {
  const out: CgroupMount[] = [];
  let text = '';
  try { text = fs.readFileSync('/proc/self/mountinfo', 'utf8'); } catch { return out; }
  const unoctal = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  for (const line of text.split('\n')) {
    const [pre, post] = line.split(' - ');
    if (!post) continue;
    const f = pre.split(' ');
    const [fstype, , superOpts = ''] = post.split(' ');
    if (fstype !== 'cgroup2' && fstype !== 'cgroup') continue;
    out.push({ dir: unoctal(f[4]), root: unoctal(f[3]), v2: fstype === 'cgroup2', controllers: fstype === 'cgroup' ? superOpts.split(',') : [] });
  }
  return out;
}

/** pid's cgroup path in the v2 hierarchy or the v1 one holding `cpu`. */
function cgroupOf(pid: number, v2: boolean): string | null {
  try {
    for (const line of fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n')) {
      const m = /^(\d+):([^:]*):(.*)$/.exec(line);
      if (!m) continue;
      if (v2 ? m[1] === '0' && m[2] === '' : m[2].split(',').includes('cpu')) return m[3];
    }
  } catch { /* gone */ }
  return null;
}

/** Every process in the cgroup at dir and its descendants, or null if unreadable. */
function procsUnder(dir: string): Set<number> | null {
  const out = new Set<number>();
  const walk = (d: string): boolean => {
    let ents: fs.Dirent[];
    try {
      for (const p of fs.readFileSync(path.join(d, 'cgroup.procs'), 'utf8').split('\n')) if (p) out.add(Number(p));
      ents = fs.readdirSync(d, { withFileTypes: true });
    } catch {
      return false;
    }
    return ents.every((e) => !e.isDirectory() || walk(path.join(d, e.name)));
  };
  return walk(dir) ? out : null;
}
