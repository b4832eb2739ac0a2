// The source side of a migration (`phaul-fast migrate`).
//
// stop-copy: CRIU dumps the tree straight into the destination's page server
// (through our zero-copy relay); at CRIU's post-dump hook the tree is frozen
// and fully dumped, and we hold CRIU there while the destination restores a
// stopped copy. Only when that copy exists do we let CRIU finish (leaving the
// original stopped), tell the destination to resume, and kill the original
// once the destination confirms it runs. Any failure before the commit makes
// CRIU (or us) resume the original: a workload is never lost and never runs twice.
// The session's states and what a failure in each does to the workload are the
// tables of source-states.ts; one StateMachine moves between them.
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { asPhaulError, PhaulError } from '../errors';
import { authenticateClient } from '../protocol/auth';
import type { ClientTls } from '../protocol/secure-channel';
import { connectDestination } from './connect';
import { pruneSettledRecords, removeSourceRecord, snapshotTree, writeSourceRecord, type OriginalProcess } from './source-record';
import { testPause } from './test-pause';
import { ImageSender } from './send-images';
import { FrameConn } from '../protocol/frames';
import type { ContainerName, MessageOf, Restored, Stats } from '../protocol/messages';
import { runCriu, criuLogTail } from '../criu';
import { autoMode, incompatibility, isMode, localCapabilities, MODES, pageServerHeaderSize, type Mode } from './capabilities';
import { batchSocket, openDataChannelClient, SourceDataChannel } from './data-channel';
import type { Socket } from 'node:net';
import { LazyDump, type DumpCpu } from '../criu';
import { TreeTracker } from '../memory/tree-tracker';
import { DirtyTrackingError } from '../memory/errors';
import { nsPid, PrecopyOptions, PrecopyRun, PrecopySender, RoundRecord } from './precopy';
import { WorkloadThrottle } from './throttle';
import { within, withDeadline } from '../util/deadline';
import { DESTINATION_PHASES } from './phases';
import { isAlive, procState, signalAll, treeMemoryBytes, treePids, waitGone } from './process-tree';
import { StateMachine, type StateChange } from './state-machine';
import { isLive, SOURCE_FAILURE, SOURCE_INITIAL, SOURCE_TRANSITIONS, type SourceState } from './source-states';
import type { ContainerDescriptor, ContainerSource, ContainerSpec } from '../container/source';
import type { ControlPump, PostcopyPusher } from '../postcopy/source';

// Loaded when a migration needs them, not at start-up: a process tree moved in
// pre-copy over plain TCP uses none of them, and a node process pays for every
// module it compiles (the whole graph is ~100 ms of CPU here).
const lazy = {
  resolve: () => require('./resolve') as typeof import('./resolve'),
  containerSource: () => require('../container/source') as typeof import('../container/source'),
  dumpOptions: () => require('../container/dump-options') as typeof import('../container/dump-options'),
  networkUnlock: () => require('../criu/network-unlock') as typeof import('../criu/network-unlock'),
  postcopyLayout: () => require('../postcopy/layout') as typeof import('../postcopy/layout'),
  postcopySource: () => require('../postcopy/source') as typeof import('../postcopy/source'),
};

/** How long the workload may stay frozen before the migration gives up and resumes it. */
export const DEFAULT_FREEZE_TIMEOUT_MS = 30_000;

interface RunState {
  /** Where the session is; SOURCE_FAILURE says what a failure there does. */
  sm: StateMachine<SourceState>;
  conn?: FrameConn;
  data?: SourceDataChannel;
  dump?: LazyDump;
  streams?: Socket[];
  /** Pre-copy: what writes the data connections (ends them). */
  sender?: PrecopySender;
  throttle?: WorkloadThrottle;
  /** CRIU finishing after it let go of the original (pre-copy: the lazy dump's end). */
  criuDone?: Promise<void>;
  /** Stop-copy: CRIU's dump, settled once CRIU let go of the tree (resumed, or left it stopped). */
  criuRun?: Promise<unknown>;
  /** Postcopy: what reads the control connection from the images on, and what sends the pages. */
  pump?: ControlPump;
  pusher?: PostcopyPusher;
  pushed?: Promise<void>;
}

/** What each mode leaves behind at the point where the destination holds a stopped copy. */
interface Switched {
  freezeAt: number;
  restoredPid: number;
  original: number[];
  bytesSent: number;
  rounds?: RoundRecord[];
}

export interface MigrateOptions {
  /** The root of the tree to move; or: */
  pid?: number;
  /** a container (its init and descendants, its bundle, runc's ownership). */
  container?: ContainerSpec;
  to: { host: string; port: number };
  token: Buffer;
  /** Where the token came from: named in the command an in-doubt error gives (nothing reads it). */
  tokenFile?: string;
  /** Default 'auto': the first of AUTO_ORDER (capabilities.ts) that both hosts offer. */
  mode?: Mode | 'auto';
  /** TLS to the destination: with a certificate (`ca` pins its authority), or `{ psk: true }` keyed by the token. */
  tls?: ClientTls;
  /** Dump established TCP connections (needs the nftables network lock). */
  tcpEstablished?: boolean;
  /**
   * Dump established TCP connections as closed: the restored process finds them
   * closed and their peers see them end (they reconnect to the destination).
   */
  tcpClose?: boolean;
  extUnixSk?: boolean;
  shellJob?: boolean;
  fileLocks?: boolean;
  linkRemap?: boolean;
  /** Where CRIU writes the non-memory images on the source (default: a temp dir). */
  workDir?: string;
  keepImages?: boolean;
  connectTimeoutMs?: number;
  restoreTimeoutMs?: number;
  /** The longest the workload may stay frozen without the destination confirming its copy
   *  (default 30 s): past it the migration rolls back and the original resumes. */
  freezeTimeoutMs?: number;
  /** Pre-copy: how long CRIU may take to freeze the tree and write its images. */
  dumpTimeoutMs?: number;
  /** Pre-copy tuning (modes 'precopy' and 'hybrid'). */
  precopy?: PrecopyOptions;
}

export interface MigrationReport {
  ok: true;
  mode: Mode;
  /** From the freeze (CRIU's pre-dump hook) to the destination confirming the tree runs. */
  downtimeMs: number;
  totalMs: number;
  bytesSent: number;
  restoredPid: number;
  phases: Record<string, number>;
  /** Pre-copy rounds, in order. */
  rounds?: RoundRecord[];
  /** Set when the requested mode could not be used and another was. */
  fallback?: string;
  /** Hybrid: from the freeze until every page is in the restored tree's memory. */
  filledMs?: number;
  /** Hybrid: what the destination's lazy-pages server did (src/native/lazy-fill.ts FillStats). */
  fill?: Stats;
  /** Pre-copy modes: CPU of CRIU's dump inside the pause (the criu-dump phase), steadier than its wall time. */
  criuDumpCpu?: DumpCpu;
  /** Pre-copy modes: the frozen round, which runs beside CRIU's dump (docs/BENCH.md "Where hybrid's pause goes"). */
  frozenRound?: FrozenRoundReport;
  /** When the tree froze and when the destination said it runs (epoch ms, this host's clock): downtimeMs apart. */
  frozenAt: number;
  runningAt: number;
  /** Something went wrong after the workload ran at the destination (it was not rolled back). */
  warning?: string;
  /** A container: as the destination's runtime knows it now. */
  container?: ContainerName;
}

/** FrozenRoundStats with its end counted from the freeze, and CRIU's images' readiness beside it. */
export interface FrozenRoundReport {
  pages: number;
  bytes: number;
  scanMs: number;
  sendMs: number;
  storedMs: number;
  /** From the freeze to the round's acknowledgement. */
  endMs: number;
  /** From the freeze to CRIU's images ready: the round hides in the pause when endMs <= this. */
  criuDumpMs: number;
}

export interface FailureReport {
  ok: false;
  error: { code: string; message: string };
  /** The source touched the workload and resumed it: it runs at the source as before. False when
   *  nothing was touched (usage errors, no such process) and when it could not be resumed (code `lost`). */
  rolledBack: boolean;
}

export class MigrationError extends PhaulError {
  constructor(e: PhaulError, readonly rolledBack: boolean) {
    super(e.code, e.message, { cause: e });
    this.name = 'MigrationError';
  }
  report(): FailureReport {
    return { ok: false, error: { code: this.code, message: this.message }, rolledBack: this.rolledBack };
  }
}

export interface PhaseEvent {
  phase: string;
  ms: number;
}

export type SourceStateEvent = StateChange<SourceState>;

/** One migration. Emits 'state' (SourceStateEvent), 'phase' ({ phase, ms }), 'round' (RoundEvent, pre-copy) and 'log' (string). */
export class Migration extends EventEmitter {
  private readonly t0 = Date.now();
  private last = this.t0;
  readonly phases: Record<string, number> = {};
  /** The tree's memory when a pre-copy began (sizes the wait for a hybrid fill). */
  private memBytes = 0;
  /** The tree's root: opts.pid, or the container's init. */
  private pid = 0;
  private container?: ContainerSource;
  /** The destination's name for the moved container (from `restored`). */
  private containerAtDest?: ContainerName;
  private criuDumpCpu?: DumpCpu;
  private frozenRound?: FrozenRoundReport;

  /** Why abort() ended the migration, if it did. */
  private abortReason?: PhaulError;
  private rejectAborted!: (e: PhaulError) => void;
  /** Rejects on abort(): raced against waits that no connection can cut (CRIU writing its images). */
  private readonly aborted = new Promise<never>((_, reject) => { this.rejectAborted = reject; });
  /** Cuts every connection of the running migration; set while it runs. */
  private cut?: (reason?: PhaulError) => void;
  private freezeTimer?: NodeJS.Timeout;
  private commitSent = false;
  /** The session id the destination gave us (names the session in logs, errors and resolve). */
  session = '';
  /** The original's processes as last recorded (source-record.ts). */
  private original: OriginalProcess[] = [];
  /** After a lost `running`: the destination confirmed that its copy never ran. */
  private destinationAborted = false;
  /** CRIU's images, sent inside the pause from memory touched before it. */
  private readonly images = new ImageSender();

  constructor(readonly opts: MigrateOptions) {
    super();
    this.aborted.catch(() => undefined);
  }

  /**
   * Ends the migration from outside (SIGINT, SIGTERM, the freeze budget): every
   * connection is cut, so whatever waits fails, and the usual rollback runs
   * (CRIU resumes the original, or we do). Once `commit` is sent the outcome is
   * the destination's: then this only logs that it is too late.
   */
  abort(reason: PhaulError): void {
    if (this.commitSent) {
      this.emit('log', `${reason.message}: too late to roll back (commit sent), waiting for the destination`);
      return;
    }
    if (this.abortReason) return;
    this.abortReason = reason;
    this.rejectAborted(reason);
    this.cut?.(reason);
  }

  private get freezeTimeoutMs(): number {
    return this.opts.freezeTimeoutMs ?? DEFAULT_FREEZE_TIMEOUT_MS;
  }

  /** The freeze budget starts when the workload stops running. */
  private startFreezeBudget(): void {
    const ms = this.freezeTimeoutMs;
    this.freezeTimer = setTimeout(() => this.abort(new PhaulError('network',
      `the workload was frozen for ${Math.round(ms / 1000)} s without the destination confirming its copy (--freeze-timeout)`)), ms);
  }

  /** Ends phase `name` at `at` (default now): it took the time since the previous one ended. */
  private phase(name: string, at = Date.now()): void {
    this.phases[name] = at - this.last;
    this.last = at;
    this.emit('phase', { phase: name, ms: this.phases[name] } satisfies PhaseEvent);
    testPause('source', name);
  }

  /**
   * Keeps the session's record (source-record.ts) while CRIU or we hold the
   * original, so that `phaul-fast resolve` can finish it if we die or lose the
   * destination; removes it once one copy runs for sure. `lost` keeps it.
   */
  private noteState(s: SourceState): void {
    if (!this.session) return;
    try {
      if (s === 'dumping' || s === 'held' || s === 'committing') {
        // committing: the same stopped processes as in `held`; no /proc walk in the pause.
        if (s !== 'committing' || !this.original.length) this.original = snapshotTree(this.pid);
        writeSourceRecord({ session: this.session, to: this.opts.to, ...(this.opts.tls ? { tls: 'psk' in this.opts.tls ? 'psk' : 'cert' } : {}),
          root: this.pid, original: this.original, state: s,
          ...(this.container || this.opts.tcpEstablished ? { networkLock: this.container?.netnsPath ? { netns: this.container.netnsPath } : {} } : {}),
          ...(this.container ? { container: { spec: this.container.spec, ...(this.container.netns ? { netns: this.container.netns.path } : {}) } } : {}) });
      } else if (s === 'done' || s === 'rolled-back' || s === 'failed') {
        removeSourceRecord(this.session);
      }
    } catch (e) {
      this.emit('log', `cannot keep the session's record for phaul-fast resolve: ${asPhaulError(e).message}`);
    }
  }

  /**
   * After `commit`: the destination's `running`. If it does not come (the
   * connection broke, or timed out), the destination is asked over a resolve
   * connection, again and again within the freeze budget: its copy runs
   * (a stopped one is committed now: we sent commit and our original is
   * stopped), or it was discarded (then the original resumes). Only if the
   * destination never answers is the outcome in doubt.
   */
  private async awaitRunning(conn: FrameConn, pump?: ControlPump): Promise<number> {
    let first: PhaulError;
    try {
      // Postcopy: the pump reads the connection (page requests go on meanwhile).
      const m = pump ? await pump.expect('running', 30_000) : await conn.next(30_000);
      if (m.t === 'running') return m.pid;
      // The destination sends `error` only as it discards a copy that never ran (destination.ts):
      // the original is ours to resume.
      if (m.t === 'error') {
        this.destinationAborted = true;
        throw new PhaulError(m.code, `${conn.peer}: ${m.message} (its copy never ran)`);
      }
      first = new PhaulError('protocol', `${conn.peer} sent '${m.t}' where 'running' was expected`);
    } catch (e) {
      if (this.destinationAborted) throw e;
      first = asPhaulError(e);
    }
    this.emit('log', `no 'running' after the commit (${first.message}): asking the destination about session ${this.session}`);
    const end = Date.now() + this.freezeTimeoutMs;
    let last = first;
    for (;;) {
      try {
        const r = await lazy.resolve().askDestination(this.opts.to, this.opts.token, this.opts.tls, this.session, 'commit', 5_000);
        if (r.state === 'running' && r.pid) {
          this.emit('log', `the destination's copy runs (pid ${r.pid}): ${r.detail}`);
          return r.pid;
        }
        if (r.state === 'aborted' || r.state === 'unknown') {
          this.destinationAborted = true;
          throw new PhaulError(first.code, `${first.message}; the destination discarded its copy, which never ran (${r.detail})`);
        }
        last = new PhaulError('network', `the destination says '${r.state}': ${r.detail}`);
      } catch (e) {
        if (this.destinationAborted) throw e;
        last = asPhaulError(e);
      }
      if (Date.now() > end) throw new PhaulError(first.code, `${first.message}; asking the destination again failed too: ${last.message}`);
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  /**
   * Ends phase `name` now, reporting the parts of it the destination measured
   * (in order) as phases of their own and the rest (messages, waiting) as
   * `name`, so that the phases still add up to the elapsed time.
   */
  private phaseWithParts(name: string, parts: Record<string, number>): void {
    const end = Date.now();
    for (const [k, ms] of Object.entries(parts)) {
      if (this.last + ms > end) break;
      this.phase(k, this.last + ms);
    }
    this.phase(name, end);
  }

  async run(): Promise<MigrationReport> {
    const o = this.opts;
    const requested = o.mode ?? 'auto';
    let mode: Mode = requested === 'auto' ? 'stop-copy' : requested;
    // Refused before anything is touched: nothing to roll back.
    if (requested !== 'auto' && !isMode(requested)) throw new MigrationError(new PhaulError('usage', `mode ${mode} is not available (have: ${MODES.join(', ')})`), false);
    if (o.tcpClose && o.tcpEstablished) throw new MigrationError(new PhaulError('usage', 'give either --tcp-established (move TCP connections) or --tcp-close (close them), not both'), false);
    if (o.tcpClose && o.container) throw new MigrationError(new PhaulError('usage', 'containers keep their TCP connections (--tcp-established); --tcp-close is for process trees'), false);
    if (o.container) {
      this.container = await lazy.containerSource().ContainerSource.open(o.container).catch((e) => { throw new MigrationError(asPhaulError(e), false); });
      this.pid = this.container.pid;
      if (requested === 'hybrid' && !this.container.lazyRestore) throw new MigrationError(new PhaulError('usage', `${this.container.runtime} cannot restore a container lazily: use --mode precopy or stop-copy`), false);
    } else {
      this.pid = o.pid ?? 0;
    }
    const pid = this.pid;
    if (!Number.isInteger(pid) || pid <= 1 || pid === process.pid) throw new MigrationError(new PhaulError('usage', `cannot migrate pid ${pid}`), false);
    if (!isAlive(pid)) throw new MigrationError(new PhaulError('notFound', `no running process ${pid}`), false);

    // Records of earlier migrates that died and left nothing to resolve (source-record.ts).
    try { pruneSettledRecords(); } catch { /* not ours to read, or no /run */ }
    const workDir = fs.mkdtempSync(path.join(o.workDir ?? os.tmpdir(), 'phaul-fast-'));
    this.images.warm();
    const sm = new StateMachine<SourceState>('source', SOURCE_TRANSITIONS, SOURCE_INITIAL, (c) => {
      this.noteState(c.to);
      this.emit('state', c satisfies SourceStateEvent);
      testPause('source', c.to);
    });
    const st: RunState = { sm };
    let tracker: TreeTracker | undefined;
    let fallback: string | undefined;
    this.cut = (reason?: PhaulError) => {
      st.data?.abort();
      // The `abort` goes to the kernel before the close, so TCP delivers it once the path works again
      // (a partition that heals): the destination then discards a copy it holds at once, instead of
      // only when its own wait for `commit` runs out.
      if (reason && this.session && st.conn && !st.conn.closed) try { st.conn.send({ t: 'abort', message: reason.message }); } catch { /* gone */ }
      st.conn?.socket.destroy();
      st.sender?.abort();
      for (const sock of st.streams ?? []) sock.destroy();
    };
    try {
      const ours = await localCapabilities();
      st.conn = await this.connect();
      if (this.abortReason) this.cut(this.abortReason);
      const session = await authenticateClient(st.conn, o.token, 'control');
      this.session = session;
      this.emit('log', `session ${session}`);
      this.phase('connect');

      sm.to('negotiating');
      st.conn.send({ t: 'caps', caps: ours, mode: requested });
      const theirs = (await st.conn.expect('caps')).caps;
      if (requested === 'auto') mode = autoMode(ours, theirs);
      // A runtime without a lazy restore gets the next best.
      if (requested === 'auto' && mode === 'hybrid' && this.container && !this.container.lazyRestore) mode = 'precopy';
      const why = incompatibility(ours, theirs, mode);
      if (why) throw new PhaulError('incompatible', why);

      if (mode === 'precopy' || mode === 'hybrid') {
        // Tracking starts before anything is promised to the destination: a
        // target we cannot track (e.g. it uses userfaultfd itself) falls back.
        tracker = new TreeTracker(pid);
        try {
          await tracker.start();
        } catch (e) {
          if (!(e instanceof DirtyTrackingError) || !e.fallback) throw e;
          fallback = `precopy unavailable for this workload (${e.message}); used stop-copy`;
          this.emit('log', fallback);
          tracker.close();
          tracker = undefined;
          mode = 'stop-copy';
        }
      }
      const result = mode === 'stop-copy'
        ? await this.stopCopy(st, session, workDir)
        : mode === 'postcopy'
          ? await this.postcopy(st, session, workDir)
          : await this.precopy(st, session, workDir, tracker!, mode);
      const conn = st.conn;
      if (this.abortReason) throw this.abortReason;
      try {
        conn.send({ t: 'commit' });
        this.commitSent = true;
      } catch (e) {
        throw asPhaulError(e, 'network');
      }
      sm.to('committing');
      result.restoredPid = await this.awaitRunning(conn, st.pump);
      sm.to('committed');
      const runningAt = Date.now();
      this.phase('commit');
      const unrouted = await this.container?.routeToDestination(o.to.host);
      // CRIU first lets go of the tree (it still holds it under ptrace), then we end it.
      await st.criuDone?.catch((e) => this.emit('log', `criu after the commit: ${asPhaulError(e).message}`));
      let filled = {};
      if (mode === 'postcopy') {
        // The original is where the copy's memory comes from: it goes once every page is in.
        sm.to('filling');
        filled = await this.postcopyFill(st, result);
      }
      signalAll(result.original, 'SIGKILL');
      await waitGone(pid, 5000);
      const forgot = await this.container?.forget();
      if (mode === 'hybrid') {
        sm.to('filling');
        filled = await this.awaitFilled(conn, result.freezeAt);
      }
      sm.to('done');
      conn.close();
      const report: MigrationReport = {
        ok: true,
        mode,
        downtimeMs: runningAt - result.freezeAt,
        frozenAt: result.freezeAt,
        runningAt,
        totalMs: runningAt - this.t0,
        bytesSent: result.bytesSent + (this.container?.bytesSent ?? 0),
        restoredPid: result.restoredPid,
        phases: this.phases,
      };
      if (result.rounds) report.rounds = result.rounds;
      if (fallback) report.fallback = fallback;
      if (this.containerAtDest) report.container = this.containerAtDest;
      if (this.criuDumpCpu) report.criuDumpCpu = this.criuDumpCpu;
      if (this.frozenRound) report.frozenRound = this.frozenRound;
      Object.assign(report, filled);
      for (const w of [unrouted, forgot]) if (w) report.warning = report.warning ? `${report.warning}; ${w}` : w;
      return report;
    } catch (err) {
      let e = asPhaulError(err);
      // A data connection reset is often the destination ending the session: its own reason says more.
      if (e.code === 'network' && !this.abortReason && !this.commitSent && st.conn) e = (await st.conn.peerReason(1000)) ?? e;
      throw await this.recover(st, this.abortReason && !this.commitSent ? this.abortReason : e);
    } finally {
      clearTimeout(this.freezeTimer);
      this.cut = undefined;
      tracker?.close();
      st.throttle?.release();
      st.sender?.close();
      st.pusher?.close();
      for (const sock of st.streams ?? []) sock.destroy();
      if (!this.opts.keepImages) fs.rmSync(workDir, { recursive: true, force: true });
    }
  }

  /**
   * A failure, undone as SOURCE_FAILURE says for the state it happened in
   * (docs/PROTOCOL.md's failure table). Returns the error to throw.
   */
  private async recover(st: RunState, e: PhaulError): Promise<MigrationError> {
    const { sm } = st;
    let recovery = isLive(sm.state) ? SOURCE_FAILURE[sm.state] : 'none';
    // The destination said its copy never ran: the original is ours to resume after all.
    if (recovery === 'leave-stopped' && this.destinationAborted) recovery = 'resume';
    // Whatever the state: our relay and CRIU's lazy dump end first (a lazy
    // dump that has not let go of the tree resumes it), then the destination
    // is told, so that it kills a copy that never ran.
    st.data?.abort();
    st.pusher?.stop();
    // The throttle first: in a stopped window of its duty cycle the tree would
    // otherwise look (and be reported) as not resumed.
    st.throttle?.release();
    // CRIU keeps its network lock (an nftables table, its TCP sockets in repair
    // mode) once a dump has succeeded, and a lazy dump resumes the tree as it
    // ends: a read from a socket still in repair mode fails (EPERM). So a tree
    // with a network lock stays stopped until we have lifted it.
    const netLock = recovery !== 'none' && !!(this.container || this.opts.tcpEstablished);
    const held = netLock && st.dump ? treePids(this.pid) : [];
    signalAll(held, 'SIGSTOP');
    await st.dump?.rollback();
    // Stop-copy: CRIU resumes the tree when its dump fails; let it finish first.
    if (st.criuRun && (await within(st.criuRun.catch(() => undefined), 30_000)) === 'late')
      this.emit('log', 'criu did not end within 30 s of the failure');
    const conn = st.conn;
    if (conn && !conn.closed) {
      try { conn.send({ t: 'abort', message: e.message }); } catch { /* gone */ }
      conn.close();
    }
    if (recovery === 'leave-stopped') {
      sm.to('lost');
      const msg = `${e.message}; the destination did not confirm after the commit, so the original is left stopped ` +
        `(pid ${this.pid}): run phaul-fast resolve ${this.session} --token-file ${this.opts.tokenFile ?? 'FILE'} on this host once the destination answers ` +
        '(it asks the destination and ends with one running copy)';
      return new MigrationError(new PhaulError('lost', msg), false);
    }
    // CRIU finished and left the original stopped; the destination never got the commit.
    // (Wait for CRIU to let go first: it stops the tree once more as it leaves.)
    if (recovery === 'resume') await st.criuDone?.catch(() => undefined);
    if (netLock) {
      const did = await lazy.networkUnlock().releaseCriuNetworkLock(treePids(this.pid), this.container?.netnsPath).catch((x) => asPhaulError(x).message);
      this.emit('log', `network lock: ${did}`);
    }
    if (recovery === 'resume') signalAll(treePids(this.pid), 'SIGCONT');
    signalAll(held, 'SIGCONT');
    const resumed = recovery !== 'none' && isAlive(this.pid) && procState(this.pid) !== 'T';
    if (!sm.terminal) sm.to(resumed ? 'rolled-back' : 'failed');
    return new MigrationError(e, resumed);
  }

  /**
   * Hybrid, after the commit: the destination says when its lazy-pages server
   * has filled the tree's memory. The workload runs there already, so nothing
   * here can fail the migration; a problem becomes a warning in the report.
   */
  private async awaitFilled(conn: FrameConn, freezeAt: number): Promise<{ filledMs?: number; fill?: Stats; warning?: string }> {
    const timeoutMs = 60_000 + this.memBytes / 50e3; // 50 MB/s at worst, a minute of slack
    try {
      const m = await conn.expect('filled', timeoutMs);
      this.phase('fill');
      if (m.ok !== true) return { warning: 'the destination\'s lazy-pages server failed after the workload resumed there (see its log)' };
      return { filledMs: Date.now() - freezeAt, ...(m.fill ? { fill: m.fill } : {}) };
    } catch (e) {
      return { warning: `no word from the destination on filling the workload's memory: ${asPhaulError(e).message}` };
    }
  }

  private criuFlags() {
    const o = this.opts;
    return {
      // A container plugged into the host keeps its connections (src/container/network.ts).
      tcpEstablished: !!o.tcpEstablished || !!this.container?.network, tcpClose: !!o.tcpClose, extUnixSk: !!o.extUnixSk, shellJob: !!o.shellJob,
      fileLocks: !!o.fileLocks, linkRemap: !!o.linkRemap,
    };
  }

  /** CRIU dumps straight into the destination's page server; we hold CRIU in its post-dump hook. */
  private async stopCopy(st: RunState, session: string, workDir: string): Promise<Switched> {
    const o = this.opts;
    const conn = st.conn!;
    const criuFlags = this.criuFlags();
    st.sm.to('preparing');
    conn.send({ t: 'prepare', mode: 'stop-copy', criu: criuFlags, memBytes: treeMemoryBytes(this.pid), freezeTimeoutMs: this.freezeTimeoutMs,
      ...this.containerField() });
    await conn.expect('prepared');
    this.syncBundle(conn);
    const dconn = await this.connect();
    await authenticateClient(dconn, o.token, 'data', session);
    const data = openDataChannelClient(dconn);
    st.data = data;
    this.phase('handshake');

    let freezeAt = 0;
    let restoredPid = 0;
    let imageBytes = 0;
    if (this.abortReason) throw this.abortReason;
    // From here CRIU has the tree: if anything fails, its dump fails and it resumes the original.
    st.sm.to('dumping');
    const criuRun = runCriu(
      {
        type: 'dump',
        imagesDir: workDir,
        logFile: 'dump.log',
        opts: {
          pid: this.pid,
          psFd: data.criuFd,
          notifyScripts: true,
          leaveStopped: true,
          networkLock: o.tcpEstablished || this.container ? 'nftables' : undefined,
          ...criuFlags,
          ...this.container?.dumpOptions(),
        },
      },
      {
        inheritFds: [data.criuFd],
        onNotify: async (script) => {
          if (script === 'pre-dump') {
            freezeAt = Date.now();
            this.startFreezeBudget();
            this.phase('criu-start');
          } else if (script === 'post-dump') {
            this.phase('dump');
            this.finalBundleDelta(conn, workDir);
            imageBytes = await this.images.send(conn, workDir);
            conn.send({ t: 'restore' });
            this.phase('images');
            const r = await conn.expect('restored', o.restoreTimeoutMs ?? 180_000);
            restoredPid = r.pid;
            this.noteContainer(r.container);
            st.sm.to('restored');
            this.phaseWithParts('restore', destinationPhases(r));
          }
          // Past the budget the hook answers "fail": CRIU resumes the original.
          if (this.abortReason) throw this.abortReason;
          return true;
        },
      },
    );
    st.criuRun = criuRun;
    const res = await criuRun;
    if (this.abortReason) throw this.abortReason;
    if (!res.success) {
      const tail = criuLogTail(path.join(workDir, 'dump.log'));
      throw new PhaulError('criu', `criu dump failed: ${tail || res.crErrmsg?.trim() || 'unknown error'}`);
    }
    // CRIU finished with leave-stopped: the original is stopped, and ours to resume.
    st.sm.to('held');
    const original = treePids(this.pid);
    const relayed = await data.done.catch(() => ({ sent: 0 }));
    return { freezeAt, restoredPid, original, bytesSent: relayed.sent + imageBytes };
  }

  /** Rounds while the workload runs, then CRIU's lazy dump and the last dirty pages. */
  private async precopy(st: RunState, session: string, workDir: string, tracker: TreeTracker, mode: 'precopy' | 'hybrid'): Promise<Switched> {
    const o = this.opts;
    const pc = { ...o.precopy, lazyRestore: mode === 'hybrid' };
    const conn = st.conn!;
    const nStreams = Math.max(1, Math.min(16, pc.streams ?? 2));
    const pid = this.pid;
    const memBytes = treeMemoryBytes(pid);
    this.memBytes = memBytes;
    st.sm.to('preparing');
    conn.send({ t: 'prepare', mode, criu: this.criuFlags(), streams: nStreams, memBytes, freezeTimeoutMs: this.freezeTimeoutMs,
      ...this.containerField() });
    await conn.expect('prepared');
    this.syncBundle(conn);
    st.streams = [];
    for (let i = 0; i < nStreams; i++) {
      const d = await this.connect();
      await authenticateClient(d, o.token, 'data', session);
      st.streams.push(batchSocket(d));
    }
    this.phase('handshake');
    st.sm.to('copying');

    // CRIU starts now and waits at its gate (criu/gate.ts), so that its
    // start-up overlaps the rounds instead of delaying the switchover.
    const ours = await localCapabilities();
    st.dump = new LazyDump({ pid, imagesDir: workDir, headerSize: pageServerHeaderSize(ours.criu), ...this.criuFlags(),
      extraArgs: this.container ? lazy.dumpOptions().containerDumpArgs(this.container.dumpOptions()) : undefined });

    // Created now so a cgroup quota can be sized from the CPU used during the rounds.
    st.throttle = pc.autoConverge ? new WorkloadThrottle(pid) : undefined;
    const sender = new PrecopySender(conn, st.streams, pc);
    st.sender = sender;
    const run = new PrecopyRun(sender, tracker, pc, (e) => this.emit('round', e), (m) => this.emit('log', m));
    const rounds = await run.rounds((pct) => {
      st.throttle ??= new WorkloadThrottle(pid);
      st.throttle.set(pct);
    });
    this.phase('precopy');
    st.throttle?.release(); // a tree stopped or capped at dump time would be restored that way

    const unprotected = run.unprotectZeros();
    if (unprotected) this.emit('log', `cleared write protection of ${(unprotected / 2 ** 20).toFixed(0)} MiB of never-populated memory`);
    // Switchover: CRIU freezes the tree and writes everything but lazy memory.
    if (this.abortReason) throw this.abortReason;
    st.sm.to('dumping');
    // A CRIU that never gets its images written must not hold the tree frozen
    // forever: past the deadline the catch below rolls it back (SIGALRM).
    const dump = st.dump;
    await Promise.race([withDeadline(dump.freeze(), o.dumpTimeoutMs ?? 120_000, 'criu', 'criu lazy dump did not freeze the tree'), this.aborted]);
    this.startFreezeBudget();
    const freezeAt = dump.frozenAt;
    this.phase('criu-freeze', freezeAt); // CRIU's set-up after the gate opened, the tree still running
    // The last dirty pages go while CRIU writes its images: they need nothing of CRIU's.
    const frozen = run.frozenRound();
    frozen.catch(() => undefined); // awaited below, after CRIU's images
    await Promise.race([withDeadline(dump.ready, o.dumpTimeoutMs ?? 120_000, 'criu', 'criu lazy dump did not finish its images'), this.aborted]);
    this.phase('criu-dump', dump.readyAt);
    if (dump.dumpCpu) {
      this.criuDumpCpu = dump.dumpCpu;
      const peak = dump.criuPeakRssKiB === undefined ? '' : `, criu's peak memory ${(dump.criuPeakRssKiB / 1024).toFixed(0)} MiB`;
      this.emit('log', `criu dump: ${dump.readyAt - freezeAt} ms from the freeze to its images, on CPU ${dump.dumpCpu.criuMs} ms (criu) + ${dump.dumpCpu.parasiteMs} ms (its parasite)${peak}`);
    }
    // CRIU's images next: a hybrid destination starts its lazy-pages server
    // on them while the final round is still on its way.
    this.finalBundleDelta(conn, workDir);
    const imageBytes = await this.images.send(conn, workDir);
    conn.send({ t: 'images-done' });
    this.phase('images');
    const fr = await frozen;
    this.phase('frozen-pages'); // what of that round CRIU's dump did not hide
    this.frozenRound = { pages: fr.pages, bytes: fr.bytes, scanMs: fr.scanMs, sendMs: fr.sendMs, storedMs: fr.storedMs,
      endMs: fr.endAt - freezeAt, criuDumpMs: dump.readyAt - freezeAt };
    const fin = await run.finalRound(workDir);
    this.phase('final-scan', this.last + fin.scanMs);
    this.phase('final-pages', this.last + fin.sendMs);
    const imageIds: Record<string, number> = {};
    const original = treePids(pid);
    for (const p of original) imageIds[String(nsPid(p))] = p;
    // Right behind the final round's end: the destination composes once its store holds that
    // round, and counts that wait as the first part of its store-flush.
    conn.send({ t: 'switchover', imageIds });
    this.phase('final-stored');
    await fin.stored;
    const r = await conn.expect('restored', o.restoreTimeoutMs ?? 180_000);
    const restoredPid = r.pid;
    this.noteContainer(r.container);
    st.sm.to('restored');
    this.phaseWithParts('restore', destinationPhases(r));
    // The copy exists (stopped). Let CRIU finish; the original stays stopped.
    st.dump = undefined;
    // A SIGSTOP queued now (the tree is frozen under CRIU's ptrace) means the
    // original cannot run again without our SIGCONT, whatever CRIU does next:
    // so the destination may resume while CRIU is still winding down (its
    // unpinning of the lazy pages took ~150 ms here), instead of after.
    signalAll(original, 'SIGSTOP');
    st.sm.to('held');
    st.criuDone = dump.commit();
    st.criuDone.catch(() => undefined);
    this.emit('log', `final round: ${fin.pages} pages`);
    return { freezeAt, restoredPid, original, bytesSent: sender.bytesSent + imageBytes, rounds };
  }

  /**
   * Postcopy: no rounds. CRIU's lazy dump freezes the tree and writes its
   * images without the lazy memory; the destination restores lazily at once
   * and its faults ask for pages (docs/DESIGN.md section 8, Postcopy). The push of
   * every page starts as soon as the images are sent.
   */
  private async postcopy(st: RunState, session: string, workDir: string): Promise<Switched> {
    const o = this.opts;
    const conn = st.conn!;
    if (this.container) throw new PhaulError('usage', 'postcopy does not move containers yet: use --mode hybrid');
    const nStreams = Math.max(2, Math.min(16, o.precopy?.streams ?? 2));
    const pid = this.pid;
    this.memBytes = treeMemoryBytes(pid);
    st.sm.to('preparing');
    conn.send({ t: 'prepare', mode: 'postcopy', criu: this.criuFlags(), streams: nStreams, memBytes: this.memBytes,
      freezeTimeoutMs: this.freezeTimeoutMs });
    await conn.expect('prepared');
    st.streams = [];
    for (let i = 0; i < nStreams; i++) {
      const d = await this.connect();
      await authenticateClient(d, o.token, 'data', session);
      st.streams.push(batchSocket(d));
    }
    const ours = await localCapabilities();
    st.dump = new LazyDump({ pid, imagesDir: workDir, headerSize: pageServerHeaderSize(ours.criu), ...this.criuFlags() });
    this.phase('handshake');
    if (this.abortReason) throw this.abortReason;
    st.sm.to('dumping');
    const dump = st.dump;
    await Promise.race([withDeadline(dump.freeze(), o.dumpTimeoutMs ?? 120_000, 'criu', 'criu lazy dump did not freeze the tree'), this.aborted]);
    this.startFreezeBudget();
    const freezeAt = dump.frozenAt;
    this.phase('criu-freeze', freezeAt);
    await Promise.race([withDeadline(dump.ready, o.dumpTimeoutMs ?? 120_000, 'criu', 'criu lazy dump did not finish its images'), this.aborted]);
    this.phase('criu-dump', dump.readyAt);
    const imageBytes = await this.images.send(conn, workDir);
    const layout = lazy.postcopyLayout().PostcopyLayout.read(workDir);
    const original = treePids(pid);
    const imageIds: Record<string, number> = {};
    const hostPid = new Map<number, number>();
    for (const p of original) {
      imageIds[String(nsPid(p))] = p;
      hostPid.set(nsPid(p), p);
    }
    conn.send({ t: 'postcopy', imageIds, pages: layout.pages });
    this.phase('images');
    // From here the control connection is read for page requests, whatever else we wait for.
    const pusher = new (lazy.postcopySource().PostcopyPusher)(layout, hostPid, st.streams, () => conn.closed);
    st.pusher = pusher;
    st.pump = new (lazy.postcopySource().ControlPump)(conn, (m) => pusher.request(m));
    st.pushed = pusher.push();
    st.pushed.catch(() => undefined); // awaited by postcopyFill
    this.emit('log', `postcopy: ${layout.pages} lazy pages (${(layout.pages * 4096 / 2 ** 20).toFixed(0)} MiB) follow the restore`);
    const pushFailed = st.pushed.then(() => new Promise<never>(() => undefined));
    const r = await Promise.race([st.pump.expect('restored', o.restoreTimeoutMs ?? 180_000), pushFailed, this.aborted]);
    this.noteContainer(r.container);
    st.sm.to('restored');
    this.phaseWithParts('restore', destinationPhases(r));
    st.dump = undefined;
    signalAll(original, 'SIGSTOP'); // as in precopy(): the original cannot run again without our SIGCONT
    st.sm.to('held');
    st.criuDone = dump.commit();
    st.criuDone.catch(() => undefined);
    return { freezeAt, restoredPid: r.pid, original, bytesSent: imageBytes };
  }

  /**
   * Postcopy, after `running`: keep sending (asked-for pages first) until the
   * destination says every page is in its copy. The copy runs already, so
   * there is no rollback; if the pages cannot all arrive, the destination
   * stops its copy and the original stays stopped here: a human decides.
   */
  private async postcopyFill(st: RunState, result: Switched): Promise<{ filledMs?: number; fill?: Stats }> {
    const pusher = st.pusher!;
    const lost = (why: string): PhaulError => {
      st.sm.to('lost');
      return new PhaulError('lost', `postcopy: ${why} before all the workload's memory reached the destination. The copy ` +
        `there (pid ${result.restoredPid}) is stopped: it cannot run without that memory. The original here is left stopped ` +
        `(pid ${this.pid}) with its memory as of the freeze: phaul-fast resolve ${this.session} --token-file ${this.opts.tokenFile ?? 'FILE'} ` +
        'on this host kills the copy and resumes the original (SIGCONT), losing what the copy did since the switchover');
    };
    const timeoutMs = 60_000 + this.memBytes / 5e3; // 5 MB/s at worst, a minute of slack
    let m: MessageOf<'filled'>;
    try {
      const pushFailed = st.pushed!.then(() => new Promise<never>(() => undefined));
      m = await Promise.race([st.pump!.expect('filled', timeoutMs), pushFailed]);
    } catch (e) {
      pusher.stop();
      throw lost(asPhaulError(e).message);
    }
    this.phase('fill');
    if (!m.ok) throw lost('the destination could not fill its copy (see its log)');
    this.emit('log', `postcopy: ${pusher.demandPages} pages sent on request (${pusher.requestCount} requests)`);
    result.bytesSent += pusher.bytesSent;
    return { filledMs: Date.now() - result.freezeAt, ...(m.fill ? { fill: m.fill } : {}) };
  }

  /** `prepare`'s container field, for a container migration. */
  private containerField(): { container?: ContainerDescriptor } {
    return this.container ? { container: this.container.describe() } : {};
  }

  /** A container's bundle, while it runs: everything the first time. */
  private syncBundle(conn: FrameConn): void {
    if (!this.container) return;
    const r = this.container.syncRound(conn);
    this.emit('log', `bundle: ${r.files} files, ${(r.bytes / 2 ** 20).toFixed(1)} MiB while the container runs`);
    this.phase('bundle');
  }

  /** With the tree frozen: what changed in the bundle since, and runc's descriptors.json for the images. */
  private finalBundleDelta(conn: FrameConn, workDir: string): void {
    if (!this.container) return;
    const r = this.container.finalRound(conn, workDir);
    this.emit('log', `bundle: last delta ${r.files} files, ${(r.bytes / 2 ** 20).toFixed(1)} MiB while frozen`);
  }

  private noteContainer(c: ContainerName | undefined): void {
    if (this.container && c) this.containerAtDest = c;
  }

  private connect(): Promise<FrameConn> {
    return connectDestination(this.opts.to, this.opts.token, this.opts.tls, this.opts.connectTimeoutMs);
  }

}

/** The destination's account of its part of the switchover (`restored.phases`): its known names, sane numbers only. */
export function destinationPhases(m: Restored): Record<string, number> {
  const out: Record<string, number> = {};
  for (const k of DESTINATION_PHASES) {
    const v = m.phases?.[k];
    if (typeof v === 'number' && v >= 0 && v < 1e7) out[k] = Math.round(v);
  }
  return out;
}

export async function migrate(opts: MigrateOptions): Promise<MigrationReport> {
  return new Migration(opts).run();
}

