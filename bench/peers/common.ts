// Helpers the CRIU peers share: a freeze watcher, image copies, log tails.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { inHost, type Host } from '../../src/testing/hosts';
import { procState, runCmd, startCmd, type RunResult, type StartedCmd } from '../../src/testing/proc';
import type { PeerContext, RunFigures } from './types';

/**
 * Notes when pid stops running: CRIU seizes the tree with ptrace, so its state
 * turns 't' (or 'T'), or the process is gone. Polled every millisecond:
 * CRIU's CLI tells no freeze time of its own (stats-dump is not written for
 * lazy dumps), and this puts CRIU and phaul-fast on one clock.
 */
export function watchFreeze(pid: number): { stop(): number | null } {
  let at: number | null = null;
  const check = () => {
    if (at !== null) return;
    const st = procState(pid);
    if (st === null || st === 't' || st === 'T' || st === 'Z') at = performance.now();
  };
  const timer = setInterval(check, 1);
  timer.unref(); // never what keeps the process alive
  return {
    stop() {
      check();
      clearInterval(timer);
      return at;
    },
  };
}

/** Copies every file of src (but logs) into dst; returns the bytes copied. */
export function copyImages(src: string, dst: string): number {
  let bytes = 0;
  for (const f of fs.readdirSync(src)) {
    if (f.endsWith('.log')) continue;
    const from = path.join(src, f);
    const st = fs.lstatSync(from);
    if (!st.isFile()) continue;
    fs.copyFileSync(from, path.join(dst, f));
    bytes += st.size;
  }
  return bytes;
}

/** The last lines of a CRIU log, for one-line error messages. */
export function logTail(file: string, lines = 3): string {
  try {
    const t = fs.readFileSync(file, 'utf8').trim().split('\n');
    const errs = t.filter((l) => /Error|error/.test(l) && !/RLIMIT_NOFILE/.test(l));
    return (errs.length ? errs : t).slice(-lines).join(' | ');
  } catch {
    return '(no log)';
  }
}

export function readPid(file: string): number {
  const n = Number(fs.readFileSync(file, 'utf8').trim());
  if (!Number.isInteger(n) || n <= 0) throw new Error(`bad pid file ${file}`);
  return n;
}

/** Resolves with the first chunk of a status stream, or rejects when done settles first / on timeout. */
export function waitStatus(status: NodeJS.ReadableStream, done: Promise<unknown>, what: string, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${what}: not ready within ${timeoutMs} ms`)), timeoutMs);
    status.once('data', () => { clearTimeout(t); resolve(); });
    done.then(() => { clearTimeout(t); reject(new Error(`${what} exited before it was ready`)); }, reject);
  });
}

/** CRIU's options for the run's TCP connections (PeerContext.tcpClose), on dump and restore alike. */
export function tcpArgs(ctx: PeerContext): string[] {
  return ctx.tcpClose ? ['--tcp-close'] : [];
}

/**
 * `criu restore -D dir -d` (plus `extra` options) in `host`, as CRIU's own
 * paths do it: the restored root's pid, when it runs, and CRIU's result (CPU).
 */
export async function criuRestore(criu: string, host: Host, dir: string, timeoutMs: number, extra: string[] = []):
Promise<{ pid: number; runningAt: number; r: RunResult }> {
  const pidfile = path.join(dir, 'restored.pid');
  const r = await runCmd(inHost(host, [criu, 'restore', ...extra, '-D', dir, '-d', '--pidfile', pidfile, '-o', 'restore.log']), { timeoutMs });
  const what = ['criu restore', ...extra].join(' ');
  if (r.code !== 0) throw new Error(`${what}${r.code === null ? ' timed out' : ''}: ${logTail(path.join(dir, 'restore.log'))}`);
  return { pid: readPid(pidfile), runningAt: performance.now(), r };
}

/** The figures of a stop-and-copy run of CRIU's (one pass, then a restore; times from performance.now()). */
export function stopCopyFigures(t: { start: number; frozen: number; free: number }, restored: { pid: number; runningAt: number },
  offLinkBytes: number, cpu: { source: number; destination: number }): RunFigures {
  return {
    restoredPid: restored.pid,
    downtimeMs: restored.runningAt - t.frozen,
    totalMs: restored.runningAt - t.start,
    sourceFreeMs: t.free - t.start,
    offLinkBytes,
    rounds: 1,
    cpuS: cpu.source + cpu.destination,
    cpuSourceS: cpu.source,
  };
}

/** `criu page-server -D dst` at the destination's address and the context's port, ready (its --status-fd spoke). */
export async function startPageServer(ctx: PeerContext, dst: string, timeoutMs: number): Promise<StartedCmd> {
  const ps = startCmd(inHost(ctx.dst, [ctx.criu, 'page-server', '-D', dst, '--address', ctx.dst.addr,
    '--port', String(ctx.port), '-o', 'page-server.log', '--status-fd', '4']), { statusFd: true, timeoutMs });
  try {
    await waitStatus(ps.status!, ps.done, 'criu page-server', 10_000);
  } catch (e) {
    ps.kill();
    throw e;
  }
  return ps;
}
