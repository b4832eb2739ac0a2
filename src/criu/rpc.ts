// Runs one CRIU request over CRIU's own RPC ("criu swrk"), with the notify hooks
// surfaced as an async callback. Holding a hook open is how the engine keeps
// CRIU at a decision point (after post-dump: kill the source, or resume it).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { addon, type CriuRpcMessage, type CriuSwrkSession } from '../native';
import { PhaulError } from '../errors';
import { criuBinary } from './binary';

export interface CriuOpts {
  pid?: number;
  leaveRunning?: boolean;
  leaveStopped?: boolean;
  extUnixSk?: boolean;
  tcpEstablished?: boolean;
  tcpClose?: boolean;
  shellJob?: boolean;
  fileLocks?: boolean;
  lazyPages?: boolean;
  manageCgroups?: boolean;
  rstSibling?: boolean;
  orphanPtsMaster?: boolean;
  evasiveDevices?: boolean;
  linkRemap?: boolean;
  /**
   * Restore: punch holes in the pages images as they are read (CRIU reads in
   * 128 MiB steps), so the images and the restored memory never both hold the
   * whole tree.
   */
  autoDedup?: boolean;
  logLevel?: number;
  statusFd?: number;
  timeout?: number;
  root?: string;
  parentImg?: string;
  freezeCgroup?: string;
  networkLock?: 'iptables' | 'nftables' | 'skip';
  notifyScripts?: boolean;
  /** Page-server socket CRIU writes pages into (must be in inheritFds). */
  psFd?: number;
  psAddress?: string;
  psPort?: number;
  external?: string[];
}

export interface CriuRequest {
  type: 'dump' | 'restore' | 'check' | 'version';
  imagesDir?: string;
  /** CRIU's log file name, written inside imagesDir. */
  logFile?: string;
  opts?: CriuOpts;
}

export interface CriuResult {
  success: boolean;
  restorePid?: number;
  crErrno?: number;
  crErrmsg?: string;
  version?: { major: number; minor: number; sublevel: number };
}

/** Called for each CRIU notification ("pre-dump", "post-dump", "post-restore", ...).
 *  Resolve true to let CRIU go on, false (or throw) to make the action fail. */
export type NotifyHandler = (script: string, pid?: number) => boolean | Promise<boolean>;

/** A `criu swrk` process waiting for its one request (see startCriu). */
export type CriuSession = CriuSwrkSession;

/**
 * Starts `criu swrk` now, for a request that runCriu sends later: a
 * restore then does not wait for CRIU's process start-up (tens of ms, more
 * on a loaded host) inside the pause. Pass it to runCriu as `session`; one
 * request per session. discardCriu() ends one that will not be used.
 */
export function startCriu(ro: { criu?: string; inheritFds?: number[] } = {}): CriuSession {
  return new (addon().CriuSwrk)(ro.criu ?? criuBinary(), ro.inheritFds ?? []);
}

/** Ends a started CRIU that got no request. */
export async function discardCriu(session: CriuSession): Promise<void> {
  session.close();
  await session.wait().catch(() => undefined);
}

export interface RunOptions {
  /** A CRIU started earlier with startCriu (else one is started now). */
  session?: CriuSession;
  inheritFds?: number[];
  onNotify?: NotifyHandler;
  criu?: string;
  /** Kill CRIU after this long (a restore from inconsistent images can spin forever). */
  timeoutMs?: number;
  /**
   * Return a successful answer without waiting for CRIU's process to exit:
   * after a restore's answer CRIU touches the tree no more, and its exit took
   * 2-88 ms here, inside the pause. The process is reaped in the background.
   */
  exitInBackground?: boolean;
}

/** The last lines of a CRIU log file that say what went wrong. */
export function criuLogTail(file: string, lines = 2): string {
  try {
    return criuLogTailOf(fs.readFileSync(file, 'utf8'), lines);
  } catch {
    return '';
  }
}

/** The last lines of CRIU's log `log` that say what went wrong. */
export function criuLogTailOf(log: string, lines = 2): string {
  const text = log.split('\n').filter((l) => l.trim() !== '');
  // Root without CAP_SYS_RESOURCE always logs this harmless one; skip it.
  const errs = text.filter((l) => /^Error/.test(l) && !/RLIMIT_NOFILE|Dumping FAILED|Restoring FAILED/.test(l));
  const tail = (errs.length ? errs : text).slice(-lines).map((l) => l.replace(/^Error \([^)]*\): /, '')).join('; ').trim();
  // CRIU names only its own option; say what migrate offers.
  return errs.some((l) => /Connected TCP socket/.test(l))
    ? `${tail} (the tree has established TCP connections: migrate --tcp-close dumps them closed, its clients reconnect; --tcp-established moves them where the address moves too)`
    : tail;
}

export async function runCriu(req: CriuRequest, ro: RunOptions = {}): Promise<CriuResult> {
  const bin = ro.criu ?? criuBinary();
  let dirFd = -1;
  const opts: Record<string, unknown> = { ...(req.opts ?? {}) };
  if (req.imagesDir) {
    dirFd = addon().openDir(req.imagesDir);
    opts.imagesDirFd = dirFd;
  }
  if (req.logFile) opts.logFile = req.logFile;
  const session = ro.session ?? new (addon().CriuSwrk)(bin, ro.inheritFds ?? []);
  let hookError: unknown;
  let timedOut = false;
  let succeeded = false;
  const timer = ro.timeoutMs
    ? setTimeout(() => { timedOut = true; session.kill(9); }, ro.timeoutMs)
    : undefined;
  try {
    session.request({ type: req.type, opts: req.type === 'version' || req.type === 'check' ? undefined : opts });
    for (;;) {
      const m: CriuRpcMessage = await session.next();
      if (m.eof) {
        if (timedOut) throw new PhaulError('criu', `criu ${req.type} did not finish within ${Math.round(ro.timeoutMs! / 1000)} s and was killed${logHint(req)}`);
        throw new PhaulError('criu', `criu ${req.type} ended without an answer${logHint(req)}`);
      }
      if (m.type === 'notify') {
        let ok = true;
        try {
          ok = ro.onNotify ? await ro.onNotify(m.script ?? '', m.pid) : true;
        } catch (e) {
          hookError = e;
          ok = false;
        }
        session.notifyReply(ok);
        continue;
      }
      if (hookError) throw hookError;
      const res: CriuResult = { success: !!m.success };
      if (m.restorePid) res.restorePid = m.restorePid;
      if (m.crErrno !== undefined) res.crErrno = m.crErrno;
      if (m.crErrmsg) res.crErrmsg = m.crErrmsg;
      if (m.version) res.version = m.version;
      succeeded = res.success;
      return res;
    }
  } finally {
    if (timer) clearTimeout(timer);
    session.close();
    const exited = session.wait().catch(() => undefined).then(() => { if (dirFd >= 0) addon().closeFd(dirFd); });
    if (!(ro.exitInBackground && succeeded)) await exited;
  }
}

function logHint(req: CriuRequest): string {
  if (!req.imagesDir || !req.logFile) return '';
  const tail = criuLogTail(path.join(req.imagesDir, req.logFile));
  return tail ? `: ${tail}` : '';
}

/** Like runCriu, but a failed action is thrown as a PhaulError with CRIU's reason. */
export async function runCriuOrThrow(req: CriuRequest, ro: RunOptions = {}): Promise<CriuResult> {
  const res = await runCriu(req, ro);
  if (!res.success) {
    const why = logHint(req).replace(/^: /, '') || res.crErrmsg?.trim() || `errno ${res.crErrno ?? '?'}`;
    throw new PhaulError('criu', `criu ${req.type} failed: ${why}`);
  }
  return res;
}
