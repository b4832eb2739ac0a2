// Small /proc and child-process helpers shared by the test and bench drivers.
// Everything acts on explicit pids: we never signal processes by name.
import * as fs from 'node:fs';
import { spawn, type SpawnOptions } from 'node:child_process';
import { isAlive, procState as engineProcState, waitGone } from '../agent/process-tree';
import { childrenOf } from '../memory/tree-tracker';

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls cond every 20 ms until it holds or ms have passed; says whether it held. */
export async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await sleep(20);
  return cond();
}

/** The state letter of /proc/PID/stat ('R', 'S', 'Z', ...) or null when gone. */
export function procState(pid: number): string | null {
  return engineProcState(pid) ?? null;
}

/** Alive = exists and is not a zombie (a restored tree's parent may reap late). */
export { isAlive };

/** Waits until pid is gone or a zombie; false on timeout. */
export { waitGone };

/** Direct children of every thread of pid. */
export { childrenOf };

export function procComm(pid: number): string | null {
  try {
    return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return null;
  }
}

/** user+system CPU seconds of one process (its own, plus waited-for children). */
export function cpuSeconds(pid: number): number {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    // fields after ')' start at field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17
    const ticks = Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
    return ticks / 100; // USER_HZ is 100 on Linux
  } catch {
    return 0;
  }
}

export function signal(pid: number, sig: NodeJS.Signals): boolean {
  try {
    process.kill(pid, sig);
    return true;
  } catch {
    return false;
  }
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** CPU seconds (user+sys) the command and the children it waited for used. */
  cpuS: number;
  wallMs: number;
}

export interface StartedCmd {
  pid: number;
  /** Readable end of the command's --status-fd (fd 4), when asked for. */
  status: NodeJS.ReadableStream | null;
  done: Promise<RunResult>;
  /** SIGKILLs the command's process group (by its id) if still running; done then resolves with code null. */
  kill(): void;
}

/**
 * Starts argv, collecting output. Node has no per-child rusage, so the command
 * runs under bash, whose `times` builtin reports its waited-for children's
 * CPU on fd 3: exact even when several commands run at once. It gets its own
 * process group so a timeout or kill() can SIGKILL the whole command (by that
 * group's id) without touching anything else. statusFd: fd 4 is a pipe to us
 * (for CRIU's --status-fd 4).
 */
export function startCmd(argv: string[], opts: SpawnOptions & { timeoutMs?: number; input?: string; statusFd?: boolean } = {}): StartedCmd {
  const t0 = performance.now();
  const script = '"$@"; ec=$?; times >&3; exit $ec';
  const stdio: Array<'pipe'> = ['pipe', 'pipe', 'pipe', 'pipe'];
  if (opts.statusFd) stdio.push('pipe');
  const child = spawn('bash', ['-c', script, 'bash', ...argv], { ...opts, detached: true, stdio });
  let stdout = '';
  let stderr = '';
  let times = '';
  child.stdout!.on('data', (d) => { if (stdout.length < 1 << 20) stdout += d; });
  child.stderr!.on('data', (d) => { if (stderr.length < 1 << 20) stderr += d; });
  (child.stdio[3] as NodeJS.ReadableStream).on('data', (d) => { times += d; });
  child.stdin!.on('error', () => { /* the command may not read its input */ });
  child.stdin!.end(opts.input ?? '');
  let killed = false;
  let closed = false;
  // Only while it runs: once reaped, its group id may belong to someone else.
  const kill = () => { if (closed) return; killed = true; if (child.pid) signal(-child.pid, 'SIGKILL'); };
  const timer = opts.timeoutMs ? setTimeout(kill, opts.timeoutMs) : undefined;
  running.add(kill);
  child.on('exit', () => { closed = true; running.delete(kill); });
  const done = new Promise<RunResult>((resolve, reject) => {
    child.on('error', (e) => { clearTimeout(timer); reject(e); });
    child.on('close', (code, sig) => {
      closed = true;
      clearTimeout(timer);
      resolve({ code: killed ? null : code, signal: sig, stdout, stderr, cpuS: parseTimes(times), wallMs: performance.now() - t0 });
    });
  });
  return { pid: child.pid ?? -1, status: opts.statusFd ? (child.stdio[4] as NodeJS.ReadableStream) : null, done, kill };
}

const running = new Set<() => void>();
/** SIGKILLs every command startCmd/runCmd started that still runs (for an interrupted benchmark). */
export function killStartedCommands(): void {
  for (const k of [...running]) k();
}

/** Runs argv to completion (see startCmd); on timeout the result's code is null. */
export function runCmd(argv: string[], opts: SpawnOptions & { timeoutMs?: number; input?: string } = {}): Promise<RunResult> {
  return startCmd(argv, opts).done;
}

/** bash `times`: line 2 is the children's "XmY.YYYs XmY.YYYs" (user, sys). */
function parseTimes(out: string): number {
  const line = out.trim().split('\n')[1] ?? '';
  let total = 0;
  for (const m of line.matchAll(/(\d+)m([\d.]+)s/g)) total += Number(m[1]) * 60 + Number(m[2]);
  return total;
}

/**
 * SIGKILLs each pid whose command name is in `comms` (so a pid recycled since
 * is never hit) and waits until all are gone or zombies.
 */
export async function killPids(pids: number[], comms: string[], timeoutMs = 5_000): Promise<void> {
  const live = pids.filter((p) => p > 0);
  for (const p of live) {
    const c = procComm(p);
    if (c !== null && comms.includes(c)) signal(p, 'SIGKILL');
  }
  for (const p of live) await waitGone(p, timeoutMs);
}

/** Live processes whose command line mentions `needle` (zombies aside). */
export function processesMentioning(needle: string): number[] {
  return fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p)).map(Number).filter((p) => {
    try { return fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(needle) && procState(p) !== 'Z'; } catch { return false; }
  });
}

/** Does a TCP socket listen on `port` in the network namespace of `pid`? */
export function listening(pid: number, port: number): boolean {
  const hex = `:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  try {
    return fs.readFileSync(`/proc/${pid}/net/tcp`, 'utf8').split('\n').some((l) => {
      const f = l.trim().split(/\s+/);
      return f[1]?.endsWith(hex) && f[3] === '0A';
    });
  } catch { return false; }
}

