// Typed access to the addon's libcriu calls (native/criu_ops.cc): check, dump,
// restore and version, each a promise that never blocks the event loop. Every
// call runs its own `criu swrk` with its own options, so calls may overlap.
// Failures are PhaulError('criu') with one line: what failed, CRIU's errno and
// the last error lines of CRIU's log.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PhaulError } from '../errors';
import { addon, type CriuOpsArgs, type CriuOpsNative } from '../native';
import { criuBinary } from './binary';

export type NetworkLock = 'iptables' | 'nftables' | 'skip';
export type CgroupMode = 'ignore' | 'none' | 'props' | 'soft' | 'full' | 'strict';

export interface CriuCallOptions {
  /** CRIU binary; default criuBinary() ($PHAUL_FAST_CRIU, then setup's choice, then PATH). */
  criuBinary?: string;
  /** CRIU's working directory, where the log goes; default imagesDir. */
  workDir?: string;
  /** Log file name inside workDir (no '/'); default `<call>.log`. */
  logFile?: string;
  /** 0 (messages) .. 4 (debug); default CRIU's (2). -v4 slows dumps 1.1-3x. */
  logLevel?: 0 | 1 | 2 | 3 | 4;
  /**
   * Our watchdog: after this many ms criu and its children are SIGKILLed and
   * the call rejects. 0 = none. Default: 120000 for restore (a restore of a
   * malformed image can spin forever, docs/DESIGN.md section 6), none otherwise (killing
   * criu mid-dump can leave the parasite in the target).
   */
  timeoutMs?: number;
}

interface CommonCrOptions {
  shellJob?: boolean;
  tcpEstablished?: boolean;
  tcpClose?: boolean;
  extUnixSk?: boolean;
  fileLocks?: boolean;
  /** 'nftables' where there is no iptables binary (this machine). */
  networkLock?: NetworkLock;
  /** true = CRIU's soft mode, false = off, or a mode name. */
  manageCgroups?: boolean | CgroupMode;
}

export interface CriuDumpOptions extends CriuCallOptions, CommonCrOptions {
  /** Root of the process tree to dump. */
  pid: number;
  imagesDir: string;
  /** --prev-images-dir, relative to imagesDir. Needs soft-dirty: fails without it. */
  parentImages?: string;
  leaveRunning?: boolean;
  leaveStopped?: boolean;
  linkRemap?: boolean;
  freezeCgroup?: string;
}

export interface CriuRestoreOptions extends CriuCallOptions, CommonCrOptions {
  imagesDir: string;
}

export interface CriuCheckOptions extends CriuCallOptions {
  /** Where check's log goes; default a temporary directory, removed afterwards. */
  imagesDir?: string;
}

/** What the addon's rejections carry besides the message. */
export interface CriuFailure {
  criuRet: number;
  errno: number;
  timedOut: boolean;
  logPath?: string;
}

function base(opts: CriuCallOptions, call: string): CriuOpsArgs {
  if (opts.logFile !== undefined && (opts.logFile === '' || opts.logFile.includes('/')))
    throw new PhaulError('usage', `logFile must be a bare file name, got '${opts.logFile}'`);
  return { ...opts, criuBinary: opts.criuBinary ?? criuBinary(), logFile: opts.logFile ?? `${call}.log` };
}

async function call<K extends keyof CriuOpsNative>(fn: K, args: CriuOpsArgs, onError?: (e: PhaulError) => PhaulError): Promise<Awaited<ReturnType<CriuOpsNative[K]>>> {
  const a = addon();
  try {
    return (await a[fn](args)) as Awaited<ReturnType<CriuOpsNative[K]>>;
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    const e = new PhaulError(err instanceof TypeError ? 'usage' : 'criu', msg, { cause: err });
    throw onError ? onError(e) : e;
  }
}

/**
 * Asks CRIU whether this kernel supports checkpoint/restore (`criu check` over
 * RPC). Resolves when CRIU says yes; rejects with CRIU's reason otherwise.
 */
export async function criuCheck(opts: CriuCheckOptions = {}): Promise<void> {
  const tmp = opts.imagesDir ? undefined : await fs.promises.mkdtemp(path.join(os.tmpdir(), 'phaul-check-'));
  try {
    await call('criuCheck', { ...base(opts, 'check'), imagesDir: opts.imagesDir ?? tmp });
  } finally {
    if (tmp) await fs.promises.rm(tmp, { recursive: true, force: true });
  }
}

/** Dumps the tree rooted at opts.pid into opts.imagesDir (killed unless leaveRunning/leaveStopped). */
export async function criuDump(opts: CriuDumpOptions): Promise<void> {
  if (!Number.isInteger(opts.pid) || opts.pid <= 0) throw new PhaulError('usage', `pid must be a positive integer, got ${opts.pid}`);
  await call('criuDump', base(opts, 'dump'), (e) =>
    // Say plainly when the cause is simply that the process is gone.
    fs.existsSync(`/proc/${opts.pid}`) ? e : new PhaulError('notFound', `no process ${opts.pid}: ${e.message}`, { cause: e.cause }),
  );
}

/**
 * Restores the images in opts.imagesDir, detached (the tree is reparented to
 * the nearest subreaper or init once criu exits). Resolves with the pid of the
 * restored root, in this process's pid namespace.
 */
export async function criuRestore(opts: CriuRestoreOptions): Promise<number> {
  return call('criuRestore', { ...base(opts, 'restore'), timeoutMs: opts.timeoutMs ?? 120_000 });
}

export interface CriuVersion {
  major: number;
  minor: number;
  sublevel: number;
  /** major*10000 + minor*100 + sublevel, as libcriu reports it. */
  code: number;
}

/** The version of the CRIU binary itself (not of libcriu), over RPC. */
export async function criuVersion(opts: Pick<CriuCallOptions, 'criuBinary' | 'timeoutMs'> = {}): Promise<CriuVersion> {
  const code = await call('criuVersion', { criuBinary: opts.criuBinary ?? criuBinary(), timeoutMs: opts.timeoutMs ?? 30_000 });
  return { major: Math.floor(code / 10000), minor: Math.floor(code / 100) % 100, sublevel: code % 100, code };
}
