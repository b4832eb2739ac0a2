// Starts and drives memwork (test/workloads/memwork.c), the self-verifying
// memory workload, in its own pid namespace so that CRIU can dump it and
// restore it on the same machine (see docs/DESIGN.md section 2: zombies are reaped
// late by the VM's PID 1, and a fresh pid namespace avoids pid clashes).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { PACKAGE_ROOT } from '../package-root';
import { PhaulError } from '../errors';
import { childrenOf, isAlive, procComm, runCmd, signal, sleep, waitGone } from './proc';

export interface MemReport {
  ok: boolean;
  pages: number;
  badPages: number;
  firstBad: number;
  /** Longest stall between two iterations of the workload's loop since start or the last resetGap. */
  maxGapMs: number;
  /** When that stall ended (CLOCK_REALTIME, ms since the epoch; memwork only): where in a migration it fell. */
  maxGapEndMs?: number;
  iterations: number;
  /** Counts reports; 1 is the ready report after the initial fill. */
  seq: number;
  /** Address of the buffer in the workload (hex), for tests that corrupt it on purpose. */
  addr: string;
}

export interface MemWorkloadOptions {
  mib: number;
  /** Rewrite rate in MB/s (10^6 bytes), spread over the buffer; 0 = idle. */
  writeMBps?: number;
  threads?: number;
  /** Start inside this network namespace (/run/netns/NAME): a "host" of hosts.ts. */
  netns?: string;
  /** Where report.json goes; default a fresh directory under the OS temp dir (removed by stop()). */
  reportDir?: string;
  /** Ready timeout; default scales with the size (the initial fill is ~1.6 s/GiB here). */
  startTimeoutMs?: number;
  /** Another program that speaks memwork's protocol (its arguments, report and signals), e.g. the
   *  bench's multi-threaded Python workload: the command before memwork's arguments, and the
   *  process name stop() may signal. Default: memwork itself. */
  program?: { command: string[]; comm: string };
}

export const MEMWORK_BIN = path.join(PACKAGE_ROOT, 'build', 'workloads', 'memwork');
const MEMWORK_SRC = path.join(PACKAGE_ROOT, 'test', 'workloads', 'memwork.c');

/**
 * The memwork binary, compiled here when missing or older than its source:
 * setup builds it, but `node-gyp rebuild` wipes build/ (including it).
 * Compiled to a temporary name and renamed, so concurrent callers are safe.
 */
export async function ensureMemwork(): Promise<string> {
  const mtime = (p: string) => { try { return fs.statSync(p).mtimeMs; } catch { return -1; } };
  if (mtime(MEMWORK_BIN) >= mtime(MEMWORK_SRC) && mtime(MEMWORK_BIN) > 0) return MEMWORK_BIN;
  if (mtime(MEMWORK_SRC) < 0) throw new PhaulError('unavailable', `${MEMWORK_BIN} missing and no source at ${MEMWORK_SRC}`);
  fs.mkdirSync(path.dirname(MEMWORK_BIN), { recursive: true });
  const tmp = `${MEMWORK_BIN}.${process.pid}.tmp`;
  const r = await runCmd(['gcc', '-O2', '-Wall', '-o', tmp, MEMWORK_SRC, '-lpthread'], { timeoutMs: 60_000 });
  if (r.code !== 0) throw new PhaulError('unavailable', `could not compile memwork: ${r.stderr.trim()}`);
  fs.renameSync(tmp, MEMWORK_BIN);
  return MEMWORK_BIN;
}

export class MemWorkload {
  /** Pids given to stop() besides our own (e.g. restored copies). */
  private readonly extra = new Set<number>();
  private readonly ownDir: boolean;

  constructor(
    /** The namespace init as the host sees it: the process to dump. */
    readonly pid: number,
    /** The `unshare` process that waits for it (our child). */
    readonly launcherPid: number,
    readonly reportPath: string,
    readonly mib: number,
    ownDir: boolean,
    /** The workload's process name: stop() signals only processes of that name (or `unshare`). */
    readonly comm = 'memwork',
  ) {
    this.ownDir = ownDir;
  }

  /** The last report on disk, or null if none yet. */
  lastReport(): MemReport | null {
    try {
      return JSON.parse(fs.readFileSync(this.reportPath, 'utf8')) as MemReport;
    } catch {
      return null;
    }
  }

  /**
   * Asks pid (default: the original; pass a restored pid explicitly) for a full
   * verification and returns its report. The report file's path is in the
   * workload's memory, so a restored copy writes the same file.
   */
  async report(pid = this.pid, timeoutMs = 15_000 + this.mib * 5): Promise<MemReport> {
    const before = this.lastReport()?.seq ?? 0;
    if (!signal(pid, 'SIGUSR1')) throw new PhaulError('notFound', `${this.comm} ${pid} is gone`);
    const end = Date.now() + timeoutMs;
    for (;;) {
      const r = this.lastReport();
      if (r && r.seq > before) return r;
      if (!isAlive(pid)) throw new PhaulError('notFound', `${this.comm} ${pid} died before reporting`);
      if (Date.now() > end) throw new PhaulError('failed', `${this.comm} ${pid} did not report within ${timeoutMs} ms`);
      await sleep(5);
    }
  }

  /** Restarts the maxGapMs measurement (the loop sees the flag within ~1 ms). */
  async resetGap(pid = this.pid): Promise<void> {
    if (!signal(pid, 'SIGUSR2')) throw new PhaulError('notFound', `${this.comm} ${pid} is gone`);
    await sleep(5);
  }

  /** Remember a pid (e.g. a restored copy) that stop() must also end. */
  adopt(pid: number): void {
    this.extra.add(pid);
  }

  /**
   * SIGKILLs the workload, its launcher and every adopted or given pid, by pid,
   * and waits until they are gone. Only processes named like the workload (memwork)
   * or unshare are signalled, so a recycled pid is never hit. Safe to call twice.
   */
  async stop(...pids: number[]): Promise<void> {
    const targets = [this.pid, this.launcherPid, ...this.extra, ...pids];
    for (const p of targets) {
      const comm = procComm(p);
      if (comm === this.comm || comm === 'unshare') signal(p, 'SIGKILL');
    }
    for (const p of targets) await waitGone(p, 5_000);
    if (this.ownDir) fs.rmSync(path.dirname(this.reportPath), { recursive: true, force: true });
  }
}

export async function startMemWorkload(opts: MemWorkloadOptions): Promise<MemWorkload> {
  const command = opts.program?.command ?? [await ensureMemwork()];
  const comm = opts.program?.comm ?? 'memwork';
  const ownDir = !opts.reportDir;
  const dir = opts.reportDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'phaul-memwork-'));
  fs.mkdirSync(dir, { recursive: true });
  const reportPath = path.join(dir, 'report.json');
  fs.rmSync(reportPath, { force: true });

  const args = [...command, '--mib', String(opts.mib), '--report', reportPath,
    '--write-mbps', String(opts.writeMBps ?? 0), '--threads', String(opts.threads ?? 1)];
  const ns = startInPidNamespace(args, { netns: opts.netns });
  const child = ns.child;
  const exited = () => ns.exited;
  const launcherPid = child.pid ?? -1;
  // A guard against a workload that never starts, not a speed check: on this
  // kind of VM, memory the hypervisor took back costs up to ~4.5 s/GiB to touch
  // when quiet and several times that on a loaded machine.
  const timeoutMs = opts.startTimeoutMs ?? 30_000 + opts.mib * 60;
  const end = Date.now() + timeoutMs;
  let pid = -1;
  for (;;) {
    if (pid < 0) pid = ns.initPid();
    const r = readReport(reportPath);
    if (pid > 0 && r && r.seq >= 1) break;
    if (exited() !== null) {
      if (ownDir) fs.rmSync(dir, { recursive: true, force: true });
      throw new PhaulError('failed', `${comm} ${exited()}: ${ns.stderr().trim() || '(no output)'}`);
    }
    if (Date.now() > end) {
      const w = new MemWorkload(pid, launcherPid, reportPath, opts.mib, ownDir, comm);
      await w.stop();
      throw new PhaulError('failed', `${comm} (${opts.mib} MiB) not ready within ${timeoutMs} ms`);
    }
    await sleep(10);
  }
  return new MemWorkload(pid, launcherPid, reportPath, opts.mib, ownDir, comm);
}

function readReport(p: string): MemReport | null {
  try {
    return JSON.parse(fs.readFileSync(p, 'utf8')) as MemReport;
  } catch {
    return null;
  }
}

export interface PidNamespaceProcess {
  child: ChildProcess;
  /** null while the launcher runs, else how it ended. */
  readonly exited: string | null;
  /** The namespace init's pid on the host (the dump target), or -1 until it exists. */
  initPid(): number;
  stderr(): string;
}

/**
 * Runs argv as the init of a new pid namespace (`unshare -pf --fork`), in a
 * session of its own, optionally inside a network namespace. Not --mount-proc:
 * that makes a mount namespace CRIU then fails to dump. The spawned process is
 * `unshare` (nsenter --net only switches namespace and execs); the init is its
 * child. Its stderr is collected until it closes it, for start-up errors.
 * The init runs under `setsid` too: CRIU refuses a tree whose session leader
 * is outside its pid namespace ("A session leader of N(1) is outside of its
 * pid namespace"); as the init is not a group leader, setsid execs in place.
 */
export function startInPidNamespace(argv: string[], opts: { netns?: string; stderr?: 'pipe' | 'ignore' } = {}): PidNamespaceProcess {
  const full = [...(opts.netns ? ['nsenter', `--net=${opts.netns}`] : []), 'unshare', '-pf', '--fork', 'setsid', ...argv];
  // detached: node calls setsid() for the child, which is what `setsid` does.
  // stderr 'ignore' for programs that never close it: CRIU would have to dump a pipe to us.
  const child = spawn(full[0], full.slice(1), { detached: true, stdio: ['ignore', 'ignore', opts.stderr ?? 'pipe'] });
  let err = '';
  const state = { exited: null as string | null };
  child.stderr?.on('data', (d) => { if (err.length < 8192) err += d; });
  child.on('exit', (code, sig) => { state.exited = `exited ${sig ?? code}`; });
  child.on('error', (e) => { state.exited = e.message; });
  child.unref();
  (child.stderr as unknown as { unref?: () => void } | null)?.unref?.();
  let init = -1;
  return {
    child,
    get exited() { return state.exited; },
    initPid: () => (init > 0 ? init : (init = childrenOf(child.pid ?? -1)[0] ?? -1)),
    stderr: () => err,
  };
}
