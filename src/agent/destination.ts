// The destination agent (`phaul-fast serve`): accepts authenticated migrations,
// receives pages through the native page server and the other images over the
// control channel, restores with CRIU and resumes the workload only when the
// source commits. Many migrations can run at once, each in its own session.
//
// Two-phase switchover (docs/PROTOCOL.md): restore leaves the tree stopped;
// `commit` resumes it. If the source goes away before committing, the stopped
// copy never ran and is killed, while the source resumes its original. The
// session's states, what it accepts in each and what a failure does are the
// tables of destination-states.ts; one StateMachine moves between them.
// Hybrid mode receives like pre-copy but restores lazily: our lazy-pages
// server fills the tree's memory from this host's store after it resumes.
import { EventEmitter } from 'node:events';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { asPhaulError, PhaulError } from '../errors';
import { authenticateServer, HANDSHAKE_MS } from '../protocol/auth';
import { type ServerTls, wrapServerSocket } from '../protocol/secure-channel';
import { type AdmissionLimits, DEFAULT_LIMITS, PendingConnections, type Reservation, SessionBudget } from './admission';
import { claimDir, forgetStoppedCopy, recordStoppedCopy, releaseDir, STORE_PREFIX, sweepDeadClaims, sweepLeftovers } from './sweep';
import { FrameConn } from '../protocol/frames';
import type { Image, Message, Prepare, Resolution, Resolve, TreeData, TreeEntries } from '../protocol/messages';
import { readOutcome, recordOutcome } from './outcomes';
import { discardUnfilledCopy, unfilledAndGone, unfilledCopy } from './unfilled';
import { boundSilence } from './connect';
import { testPause } from './test-pause';
import { composeImages } from '../store/compose';
import { defaultStoreRoot, PageStore } from '../store/page-store';
import { withDeadline } from '../util/deadline';
import { type CriuSession, discardCriu, ensureKerndatCache, LazyPagesServer, runCriuOrThrow, startCriu } from '../criu';
import { incompatibility, localCapabilities, pageServerHeaderSize } from './capabilities';
import { isAlive, signalAll, startTime, treePids, waitGone } from './process-tree';
import { BatchStream, DataChannel, openBatchStream, openDataChannelServer } from './data-channel';
import { ContainerServeOptions, prepareContainerTarget, type RuntimeTarget } from '../container/target';
import { criuBinary } from '../criu/binary';
import { StateMachine, type StateChange } from './state-machine';
import {
  copyRan, DESTINATION_ACCEPTS, DESTINATION_FAILURE, DESTINATION_INITIAL, DESTINATION_TRANSITIONS, type DestinationState,
} from './destination-states';
import { DESTINATION_PHASES } from './phases';
import { PostcopyLayout } from '../postcopy/layout';
import { PostcopyReceiver } from '../postcopy/destination';

type DestinationPhase = (typeof DESTINATION_PHASES)[number];

export interface DestinationOptions {
  host: string;
  port: number;
  /** Where sessions keep their images while a migration runs. */
  dir: string;
  token: Buffer;
  /** TLS on every connection: with a certificate, or `{ psk: true }` keyed by the token. */
  tls?: ServerTls;
  keepImages?: boolean;
  /** Caps and budgets (admission.ts); unset fields take DEFAULT_LIMITS. */
  limits?: Partial<AdmissionLimits>;
  /** Upper bound for one CRIU restore (it can spin forever on bad images). */
  restoreTimeoutMs?: number;
  /** Where pre-copy page stores live (default: /dev/shm when it has room). */
  storeDir?: string;
  /** Where moved containers go (runc's state directory, bundles, cgroups). */
  containers?: ContainerServeOptions;
}

const MAX_IMAGES = 100_000;
const MAX_IMAGE_BYTES = 4 * 1024 ** 3;

/** Emitted by DestinationAgent as 'state' on every change of a session's state. */
export interface SessionStateEvent extends StateChange<DestinationState> {
  session: string;
}

class DestSession {
  readonly id = crypto.randomBytes(12).toString('hex');
  private readonly sm: StateMachine<DestinationState>;
  mode = '';
  dir = '';
  /** Stop-copy: the one page-server connection. */
  data?: DataChannel;
  private dataArrived!: (d: DataChannel) => void;
  readonly dataPromise = new Promise<DataChannel>((r) => { this.dataArrived = r; });
  /** Pre-copy: the page store and its batch streams. */
  store?: PageStore;
  /** Hybrid: the server filling the restored tree's memory from the store. */
  lazyPages?: LazyPagesServer;
  /** Postcopy: where arriving pages go (resolves once the images say where), and its directory. */
  private postcopy?: Promise<PostcopyReceiver>;
  private openPostcopy?: (r: PostcopyReceiver) => void;
  private postcopyDir = '';
  /** Hybrid: the top level of the store's parent-image chain, which the lazy-pages server reads. */
  private chainTop = '';
  expectedStreams = 0;
  private readonly streams: BatchStream[] = [];
  private readonly received = new Map<number, number>();
  private streamError?: PhaulError;
  private progress?: () => void;
  restoredPid = 0;
  /** A container migration: its bundle here and the runtime that will own it. */
  container?: RuntimeTarget;
  private reservation?: Reservation;
  /** How long a restored copy waits for `commit` before it is discarded. */
  private commitWaitMs = 60_000;
  /** CRIU for the restore, started before the switchover (criu/rpc.ts startCriu). */
  private criu?: CriuSession;
  /** What the switchover's destination side spent, in order (sent with `restored`). */
  private readonly phases: Record<string, number> = {};
  private phaseFrom = 0;

  /** Ends a destination phase (see DESTINATION_PHASES); the first starts at `from`. */
  private phase(name: DestinationPhase, from?: number): void {
    const now = Date.now();
    if (from !== undefined) this.phaseFrom = from;
    this.phases[name] = now - this.phaseFrom;
    this.phaseFrom = now;
  }

  constructor(readonly agent: DestinationAgent, readonly conn: FrameConn) {
    this.sm = new StateMachine(`destination session ${this.id.slice(0, 8)}`, DESTINATION_TRANSITIONS, DESTINATION_INITIAL,
      (c) => {
        agent.emit('state', { session: this.id, ...c } satisfies SessionStateEvent);
        testPause('destination', c.to);
      });
  }

  get state(): DestinationState {
    return this.sm.state;
  }

  /** The source's next message, if the current state accepts it; its `error` or `abort` ends the session. */
  private async receive(timeoutMs: number): Promise<Message> {
    const m = await this.conn.next(timeoutMs);
    if (m.t === 'error') throw new PhaulError(m.code, `${this.conn.peer}: ${m.message}`);
    if (m.t === 'abort') throw new PhaulError('failed', 'source aborted the migration');
    if (!DESTINATION_ACCEPTS[this.state].includes(m.t)) throw new PhaulError('protocol', `unexpected '${m.t}' in state ${this.state}`);
    return m;
  }

  /** Pre-copy and hybrid: pages come as batches on N streams into a page store. */
  private streamsPages(): boolean {
    return this.mode === 'precopy' || this.mode === 'hybrid' || this.mode === 'postcopy';
  }

  /** Is this session waiting for (another) data connection? */
  wantsData(): boolean {
    if (this.state !== 'receiving') return false;
    return this.streamsPages() ? this.streams.length < this.expectedStreams : !this.data;
  }

  attachData(conn: FrameConn): void {
    if (!this.wantsData()) throw new PhaulError('protocol', 'unexpected data connection');
    if (!this.streamsPages()) {
      this.data = openDataChannelServer(conn);
      this.dataArrived(this.data);
      return;
    }
    // Pre-copy: page batches, checked as they come; over plain TCP a raw
    // batch's payload goes natively from the socket into the store's files.
    const store = this.store;
    const stream = openBatchStream(conn);
    this.streams.push(stream);
    const stored = (round: number) => {
      this.received.set(round, (this.received.get(round) ?? 0) + 1);
      this.progress?.();
    };
    const h = stream.attach(store ? {
      write: (b) => store.write(b).then(() => stored(b.round)),
      receive: (b, pull) => store.receive(b, pull).then(() => stored(b.round)),
    } : {
      // Postcopy: batches may come before `postcopy` (the images) is read: they wait for it.
      write: async (b) => { await (await this.postcopy!).write(b); stored(b.round); },
    }, (e) => {
      this.streamError ??= asPhaulError(e, 'protocol');
      this.progress?.();
      // Once the commit is decided an `error` would tell the source its copy never ran (migrate.ts awaitRunning).
      if (this.commitDecided) return;
      // Fail the session now, not at the next control message: the source may
      // be blocked writing to this (now paused) stream.
      try {
        this.conn.send({ t: 'error', code: this.streamError.code, message: this.streamError.message });
      } catch { /* already gone */ }
      this.conn.close();
    });
    h.done.catch(() => undefined); // reported through onError
  }

  /** Resolves once `count` batches of `round` are in the store. */
  private async roundComplete(round: number, count: number, timeoutMs: number): Promise<void> {
    const end = Date.now() + timeoutMs;
    while ((this.received.get(round) ?? 0) < count) {
      if (this.streamError) throw this.streamError;
      if (this.conn.closed) throw new PhaulError('network', 'source went away');
      if ((this.received.get(round) ?? 0) > count) throw new PhaulError('protocol', `more batches than announced in round ${round}`);
      if (Date.now() > end) throw new PhaulError('network', `round ${round} did not complete within ${timeoutMs / 1000} s`);
      await new Promise<void>((r) => { this.progress = r; setTimeout(r, 200); });
    }
  }

  private log(s: string): void {
    this.agent.emit('log', `[${this.id.slice(0, 8)}] ${s}`);
  }

  async run(): Promise<void> {
    const { conn, agent } = this;
    try {
      const hello = await conn.expect('caps');
      const theirs = hello.caps;
      if (hello.mode === undefined) throw new PhaulError('protocol', "message 'caps' has no 'mode'");
      const mode = hello.mode;
      const ours = await localCapabilities();
      // 'auto': the source picks from both lists; its `prepare` names the mode (checked there).
      const why = mode === 'auto' ? incompatibility(theirs, ours, 'stop-copy') : incompatibility(theirs, ours, mode);
      if (why) {
        conn.send({ t: 'error', code: 'incompatible', message: why });
        throw new PhaulError('incompatible', why);
      }
      conn.send({ t: 'caps', caps: ours });
      this.log(`migration from ${theirs.kernel}/${theirs.arch}, CRIU ${theirs.criu.major}.${theirs.criu.minor}, mode ${mode}`);

      const prep = await conn.expect('prepare');
      this.mode = prep.mode;
      if (!ours.modes.includes(this.mode)) throw new PhaulError('incompatible', `mode ${this.mode} is not available here`);
      const criuFlags = prep.criu;
      // The declared size is the source's word: it decides admission (a liar
      // fails later, at the store's or the page server's own limits).
      const memBytes = prep.memBytes;
      // The source's freeze budget: past it the source has rolled back, so a copy
      // still waiting for its commit is discarded then (and never resumed).
      if (prep.freezeTimeoutMs !== undefined) this.commitWaitMs = prep.freezeTimeoutMs;
      // tmpfs when it can hold the workload (twice the room: the store, then the restore), else disk.
      const storeRoot = this.streamsPages() ? agent.opts.storeDir ?? defaultStoreRoot(2 * memBytes) : agent.opts.dir;
      this.reservation = agent.budget.reserve(memBytes, storeRoot);
      this.dir = path.join(agent.opts.dir, this.id);
      fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
      // What the switchover will run, started now so that no process start-up
      // lands in the pause: CRIU for the restore, and a hybrid restore's
      // lazy-pages server (a Node process: ~0.2-1 s to start on a loaded host).
      if (prep.container !== undefined) {
        this.container = await prepareContainerTarget(prep.container, agent.opts.containers ?? {});
        this.log(`container ${this.container.desc.id} goes to bundle ${this.container.bundle}`);
      }
      // CRIU's kernel-probe cache, checked again now (a stat when it is there):
      // another CRIU build on this host deletes it as stale, and a restore
      // without it probes the kernel inside the pause (kerndat-cache.ts).
      const kdat = ensureKerndatCache(criuBinary());
      if (kdat === 'written' || kdat.startsWith('failed')) this.log(`CRIU's kernel-probe cache: ${kdat}`);
      // (A container's restore is runc's, which runs its own CRIU.)
      if (!this.container) this.criu = startCriu();
      if (this.mode === 'hybrid' || this.mode === 'postcopy') this.startLazyPages();

      if (this.mode === 'postcopy') {
        this.expectedStreams = streamsOf(prep);
        this.postcopyDir = fs.mkdtempSync(path.join(storeRoot, STORE_PREFIX));
        this.postcopy = new Promise((resolve) => { this.openPostcopy = resolve; });
        conn.send({ t: 'prepared' });
        this.sm.to('receiving');
        await this.receivePostcopy();
      } else if (this.streamsPages()) {
        this.expectedStreams = streamsOf(prep);
        this.store = new PageStore(fs.mkdtempSync(path.join(storeRoot, STORE_PREFIX)),
          agent.limits.maxStoreBytes < Infinity ? { maxBytes: agent.limits.maxStoreBytes - agent.budget.reservedBytes + memBytes } : {});
        conn.send({ t: 'prepared' });
        this.sm.to('receiving');
        await this.receivePrecopy();
      } else {
        conn.send({ t: 'prepared' });
        this.sm.to('receiving');
        const data = await withDeadline(this.dataPromise, 30_000, 'network', 'the source did not open its data connection');
        const pages = data.servePages(this.dir, pageServerHeaderSize(theirs.criu));
        pages.catch(() => undefined); // awaited below; an abort before then must not go unhandled
        const count = await this.receiveImages();
        const stats = await withDeadline(pages, 60_000, 'network', 'pages did not finish arriving');
        this.log(`received ${count} images and ${stats.pages} pages`);
      }
      await this.restoreAndCommit(criuFlags);
    } catch (err) {
      const e = asPhaulError(err);
      if (this.sm.terminal) {
        this.log(`after the migration: ${e.message}`);
      } else if (DESTINATION_FAILURE[this.state as keyof typeof DESTINATION_FAILURE] === 'keep') {
        // The copy runs and is the workload: nothing rolls back.
        this.log(`after the workload resumed here: ${e.message}`);
        this.sm.to('done');
      } else {
        this.log(`migration failed: ${e.message}`);
        await this.rollback();
        try {
          if (!conn.closed) conn.send({ t: 'error', code: e.code, message: e.message });
        } catch { /* connection already gone */ }
      }
    } finally {
      if (this.criu) await discardCriu(this.criu);
      this.data?.abort();
      for (const s of this.streams) s.close();
      if (this.lazyPages) {
        // A tree that ran needs the server until every page is in; one that never ran does not.
        if (copyRan(this.state)) await this.lazyPages.exited;
        else await this.lazyPages.kill();
      }
      await this.store?.destroy().catch(() => undefined);
      if (this.postcopy) await this.closePostcopy();
      if (this.dir && !agent.opts.keepImages) fs.rmSync(this.dir, { recursive: true, force: true });
      conn.close();
      this.reservation?.release();
      agent.sessions.delete(this.id);
    }
  }

  /** Pre-copy: layouts and round ends on the control channel, pages on the streams,
   *  then CRIU's lazy images and the switchover: compose images from the store. */
  private async receivePrecopy(): Promise<void> {
    const store = this.store!;
    let finalAt: number | undefined;
    for (;;) {
      const m = await this.receive(10 * 60_000);
      if (m.t === 'layout') {
        for (const pid of m.gone ?? []) store.forget(pid);
        for (const p of m.procs) store.setLayout(p.pid, p.ranges);
        this.conn.send({ t: 'layout-ack' });
      } else if (m.t === 'round') {
        // The final round's storing is the first part of the switchover (store-flush): the
        // source sends the switchover right behind it.
        if (m.final) finalAt = Date.now();
        await this.roundComplete(m.round, m.batches, 10 * 60_000);
        this.conn.send({ t: 'round-ack', round: m.round });
      } else if (m.t === 'image') {
        this.writeImage(m);
      } else if (m.t === 'tree-entries' || m.t === 'tree-data') {
        this.treeMessage(m);
      } else if (m.t === 'images-done') {
        // CRIU's images are all here, the final round is on its way (a hybrid
        // restore's lazy-pages server runs since prepare).
        if (this.mode === 'hybrid' && !this.lazyPages) this.startLazyPages();
      } else if (m.t === 'switchover') {
        const t0 = finalAt ?? Date.now();
        const imageIds: Record<number, number> = {};
        for (const [k, v] of Object.entries(m.imageIds)) imageIds[Number(k)] = v;
        await store.finalizeParent();
        this.phase('store-flush', t0);
        // Hybrid keeps CRIU's lazy entries lazy and serves them from the store;
        // still, every one must be there before the restore.
        const st = await composeImages({ criuDir: this.dir, store, imageIds, mode: this.mode === 'hybrid' ? 'lazy' : 'chain' });
        this.chainTop = st.chainTop ?? '';
        this.phase('compose');
        this.log(`composed ${st.mode} images in ${st.ms.toFixed(1)} ms (${st.storePages - st.zeroPages} pages from the store, ` +
          `${st.zeroPages} all-zero pages left unpopulated, ${st.presentPages} present)`);
        return;
      } else {
        throw new PhaulError('protocol', `unexpected '${m.t}' during pre-copy`);
      }
    }
  }

  /** Postcopy: CRIU's images until `postcopy`; the pages then go to the pages file as they come. */
  private async receivePostcopy(): Promise<void> {
    for (;;) {
      const m = await this.receive(10 * 60_000);
      if (m.t === 'image') { this.writeImage(m); continue; }
      if (m.t !== 'postcopy') throw new PhaulError('protocol', `unexpected '${m.t}' before postcopy`);
      const layout = PostcopyLayout.read(this.dir);
      if (layout.pages !== m.pages) throw new PhaulError('protocol', `the images list ${layout.pages} lazy pages, the source says ${m.pages}`);
      const ids = new Map<number, number>();
      for (const [k, v] of Object.entries(m.imageIds)) ids.set(v, Number(k));
      const control = this.lazyPages!.control!;
      this.openPostcopy!(new PostcopyReceiver(layout, this.postcopyDir, ids, control, (page, pages) => {
        try { this.conn.send({ t: 'page-request', page, pages }); } catch { /* the source is gone: the fill fails */ }
      }));
      this.log(`postcopy: ${layout.pages} lazy pages (${(layout.pages * 4096 / 2 ** 20).toFixed(0)} MiB) to come from the source`);
      return;
    }
  }

  private imageCount = 0;
  private imageBytes = 0;

  /** One of CRIU's images (its name was checked by the validator: no path, no dot file). */
  private writeImage(m: Image): void {
    const { name, data: body } = m;
    const append = m.append === true;
    if (!append && ++this.imageCount > MAX_IMAGES) throw new PhaulError('protocol', 'too many images');
    this.imageBytes += body.length;
    if (this.imageBytes > MAX_IMAGE_BYTES) throw new PhaulError('protocol', 'images exceed the size limit');
    // 'wx' refuses to overwrite what the page server (or an earlier image) wrote.
    fs.writeFileSync(path.join(this.dir, name), body, { flag: append ? 'a' : 'wx' });
  }

  /** A container's bundle files, in rounds. */
  private treeMessage(m: TreeEntries | TreeData): void {
    if (!this.container) throw new PhaulError('protocol', `'${m.t}' without a container`);
    this.container.handle(m);
  }

  /** Stop-copy: images until `restore`. */
  private async receiveImages(): Promise<number> {
    for (;;) {
      const m = await this.receive(10 * 60_000);
      if (m.t === 'image') { this.writeImage(m); continue; }
      if (m.t === 'tree-entries' || m.t === 'tree-data') { this.treeMessage(m); continue; }
      if (m.t !== 'restore') throw new PhaulError('protocol', `unexpected '${m.t}' while receiving images`);
      return this.imageCount;
    }
  }

  /**
   * Hybrid: the lazy-pages server, started at prepare (it needs only the
   * images directory for its socket, and learns the store's chain at the
   * switchover) so that its start-up overlaps the rounds, not the pause.
   */
  private startLazyPages(): LazyPagesServer {
    this.lazyPages = new LazyPagesServer({ imagesDir: this.dir, postcopy: this.mode === 'postcopy' });
    return this.lazyPages;
  }

  /** Restore stopped, report, and resume only on the source's commit. */
  private async restoreAndCommit(criuFlags: Prepare['criu']): Promise<void> {
    const { conn, agent } = this;
    this.sm.to('restoring');
    const t0 = Date.now();
    this.phaseFrom ||= t0;
    // Hybrid with nothing in the store to fill lazily (all of it non-lazy memory) restores plainly.
    const lazy = (this.mode === 'hybrid' && this.chainTop !== '') || this.mode === 'postcopy';
    if (!lazy && this.lazyPages) {
      await this.lazyPages.kill(); // started early, not needed after all
      this.lazyPages = undefined;
    }
    if (lazy) {
      const lp = this.lazyPages ?? this.startLazyPages();
      await withDeadline(lp.ready, 30_000, 'criu', 'the lazy-pages server did not start');
      const pc = this.postcopy && await this.postcopy;
      const storeDir = pc ? this.postcopyDir : this.store!.dir;
      lp.start({ ...(pc ? { pagesFile: pc.file } : { chainTop: this.chainTop }), cleanup: agent.opts.keepImages ? [] : [storeDir, this.dir] });
      this.log(`lazy-pages server (pid ${lp.pid}) waits for the restore (started ${t0 - lp.startedAt} ms before it)`);
      this.phase('lazy-pages');
    }
    const timeoutMs = agent.opts.restoreTimeoutMs ?? 120_000;
    if (this.container) {
      // The runtime restores it (and owns it); CRIU leaves it stopped as below.
      this.restoredPid = await this.container.restore({ imagesDir: this.dir, criu: criuBinary(), criuFlags, lazy, timeoutMs });
    } else await this.restoreWithCriu(criuFlags, lazy, timeoutMs);
    this.sm.to('restored-stopped');
    this.phase('criu-restore');
    if (this.postcopy) this.lazyPages?.tree(this.restoredPid);
    // Should this agent die now, the next one kills the copy (it never ran): sweep.ts.
    recordStoppedCopy(this.dir, this.restoredPid);
    conn.send({ t: 'restored', pid: this.restoredPid, restoreMs: Date.now() - t0, phases: this.phases,
      ...(this.container ? { container: this.container.report() } : {}) });
    this.log(`restored as pid ${this.restoredPid} (stopped${lazy ? ', memory filling lazily' : ''}) in ${Date.now() - t0} ms`);
    // The store is not needed any more (hybrid: not until the tree's memory is
    // filled from it): free its memory before resuming.
    if (!lazy) await this.store?.destroy().catch(() => undefined);

    const decision = await this.awaitDecision();
    if (decision.decide === 'abort') throw new PhaulError(decision.code, decision.why);
    this.commitDecided = true;
    // On record before the SIGCONT: a copy that may have run is never taken for one that did not (outcomes.ts).
    recordOutcome(agent.opts.dir, this.id, { outcome: 'committed', pid: this.restoredPid, startTime: startTime(this.restoredPid),
      ...(this.lazyPages ? { filling: true } : {}) });
    await this.container?.opening?.().catch((e) => this.log(`the container's network stays locked: ${asPhaulError(e).message}`));
    signalAll(treePids(this.restoredPid), 'SIGCONT');
    forgetStoppedCopy(this.dir);
    this.sm.to('running');
    this.settle({ state: 'running', pid: this.restoredPid, detail: `the copy runs as pid ${this.restoredPid}` });
    this.container?.committed();
    try {
      conn.send({ t: 'running', pid: this.restoredPid });
    } catch { /* committed through a resolve connection: the control connection is gone */ }
    this.log(`running as pid ${this.restoredPid}`);
    agent.emit('migrated', { session: this.id, pid: this.restoredPid, ...(this.container ? { container: this.container.report() } : {}) });
    if (this.lazyPages) {
      this.sm.to('filling');
      if (this.postcopy) void this.watchSource();
      await this.fillLazily(this.lazyPages, t0);
    }
    this.sm.to('done');
    await conn.next(5_000).catch(() => undefined); // let the source close first
  }

  /**
   * Postcopy, while filling: the source must stay. When its control
   * connection ends (or it sends anything: only `abort` could come), no more
   * pages can arrive: the lazy-pages server is told, and fails if it lacks any.
   */
  private async watchSource(): Promise<void> {
    const pc = await this.postcopy!;
    await this.conn.next(2 ** 31 - 1).catch(() => undefined);
    pc.sourceGone();
  }

  /** A process tree: CRIU (started ahead) restores it stopped, and we learn its pid. */
  private async restoreWithCriu(criuFlags: Prepare['criu'], lazy: boolean, timeoutMs: number): Promise<void> {
    const { agent } = this;
    const criu = this.criu;
    this.criu = undefined;
    const res = await runCriuOrThrow(
      {
        type: 'restore',
        imagesDir: this.dir,
        logFile: 'restore.log',
        opts: {
          leaveStopped: true,
          lazyPages: lazy,
          networkLock: criuFlags.tcpEstablished ? 'nftables' : undefined,
          // The images are read once: freeing them as the restore reads them
          // halves the destination's peak memory, and the restore's own pages
          // come from what the images just gave back instead of from memory
          // nobody has touched (on VMs with free-page reporting, 3-4x slower
          // to fault in; docs/BENCH.md).
          autoDedup: !agent.opts.keepImages,
          ...criuFlags,
        },
      },
      {
        session: criu,
        timeoutMs,
        exitInBackground: true,
        onNotify: (_script, pid) => {
          if (pid && !this.restoredPid) this.restoredPid = pid;
          return true;
        },
      },
    );
    this.restoredPid = res.restorePid ?? this.restoredPid;
  }

  /**
   * Hybrid, after the tree runs: wait for the server to have placed every
   * page, then tell the source (which may already be gone: the workload no
   * longer needs it). A server failing here cannot be rolled back any more.
   */
  private async fillLazily(lazyPages: LazyPagesServer, t0: number): Promise<void> {
    const { ok, why } = await lazyPages.outcome;
    const ms = Date.now() - t0;
    const fill = lazyPages.stats;
    // On record for resolve: filled (committed), or stopped for good (unfilled.ts).
    try {
      recordOutcome(this.agent.opts.dir, this.id, { outcome: ok ? 'committed' : 'unfilled', pid: this.restoredPid, startTime: startTime(this.restoredPid) });
    } catch (e) {
      this.log(`cannot record the session's outcome: ${asPhaulError(e).message}`);
    }
    this.unfilled = !ok;
    if (ok) {
      this.log(`memory filled ${ms} ms after the restore began` + (fill ? ` (${fill.copiedPages} pages in ${fill.fillMs} ms after ` +
        `the restore, ${fill.faults} faults, p99 ${fill.faultUs.p99} us, ${Math.round(fill.punchedBytes / 2 ** 20)} MiB of the store given back)` : ''));
    } else {
      // Pages never placed would read as zeros. Stop the tree rather than let
      // it compute (and write out) garbage; a human decides.
      // The server holds the tree's userfaultfds until it ends (faults wait meanwhile): stop first, then end it.
      signalAll(treePids(this.restoredPid), 'SIGSTOP');
      await lazyPages.kill();
      this.log(`the lazy-pages server failed before the memory of pid ${this.restoredPid} was filled (${why}); the tree ` +
        `is stopped (SIGSTOP) because unfilled pages would read as zeros` + (this.postcopy
        ? '. Postcopy: the missing pages exist only in the original at the source, left stopped there with its memory ' +
          `as of the freeze: phaul-fast resolve ${this.id} on the source host kills this copy and resumes the original (SIGCONT), ` +
          'losing what the copy did since the switchover'
        : ''));
    }
    this.lazyPages = undefined;
    this.agent.emit('filled', { session: this.id, pid: this.restoredPid, ok, ms, fill });
    try {
      this.conn.send({ t: 'filled', ok, ms, ...(fill ? { fill: { ...fill, faultUs: { ...fill.faultUs } } } : {}) });
    } catch { /* the source left; nothing of ours depends on it */ }
  }

  /** Settles a stopped copy: set while one waits for its decision (awaitDecision). */
  private decide?: (d: { decide: 'commit' | 'abort'; why: string; code: PhaulError['code'] }) => void;
  /** A resolve connection said abort before the copy was restored: it is killed once it is. */
  private abortRequested = false;
  /** The copy ran, its fill failed, and it is stopped for good (unfilled.ts). */
  private unfilled = false;
  /** `commit` came: from here the source hears `running` or nothing, never an `error`. */
  private commitDecided = false;
  private settled?: (r: Omit<Resolution, 't'>) => void;
  private readonly settledAs = new Promise<Omit<Resolution, 't'>>((r) => { this.settled = r; });

  private settle(r: Omit<Resolution, 't'>): void {
    this.settled?.(r);
    this.settled = undefined;
  }

  /**
   * The stopped copy waits for the source to decide: `commit` or `abort` on
   * the control connection or, once that is lost, on a `resolve` connection
   * (the source's migrate, or phaul-fast resolve on the source host). The
   * source holds the answer: it alone knows whether it sent `commit` and
   * whether its original runs. Only if nobody asks within the source's freeze
   * budget (from the restore, and again from a lost connection) is the copy
   * discarded: it never ran, so the source's original is the workload.
   */
  private awaitDecision(): Promise<{ decide: 'commit' | 'abort'; why: string; code: PhaulError['code'] }> {
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const finish = (d: { decide: 'commit' | 'abort'; why: string; code: PhaulError['code'] }) => {
        if (!this.decide) return;
        this.decide = undefined;
        clearTimeout(timer);
        resolve(d);
      };
      this.decide = finish;
      if (this.abortRequested) return finish({ decide: 'abort', code: 'failed', why: 'the source aborted the session (resolve)' });
      const arm = (why: string) => {
        clearTimeout(timer);
        timer = setTimeout(() => finish({ decide: 'abort', code: 'network', why }), this.commitWaitMs);
      };
      const s = Math.round(this.commitWaitMs / 1000);
      arm(`no commit within ${s} s of the restore (the source's freeze budget)`);
      this.receive(this.commitWaitMs + 60_000).then((m) => {
        // receive() lets only `commit` through here; `abort` and `error` throw.
        finish({ decide: m.t === 'commit' ? 'commit' : 'abort', code: 'protocol', why: `'${m.t}' from the source` });
      }, (e) => {
        const err = asPhaulError(e);
        if (!this.decide) return;
        // The source said no (abort, error) or broke the protocol: decided.
        if (err.code !== 'network') return finish({ decide: 'abort', code: err.code, why: err.message });
        arm(`the source went away (${err.message}) and nobody resolved session ${this.id} within ${s} s`);
        this.log(`lost the source with the copy stopped (pid ${this.restoredPid}, never ran): ${err.message}; it waits up to ${s} s ` +
          `for the source to decide (its migrate, or phaul-fast resolve ${this.id} on the source host), then is discarded`);
      });
    });
  }

  /** A `resolve` connection asks about this session (and may decide a stopped copy). */
  async resolve(decide: Resolve['decide']): Promise<Omit<Resolution, 't'>> {
    const pid = this.restoredPid > 0 ? { pid: this.restoredPid } : {};
    if (this.unfilled) {
      if (decide !== 'abort' || !isAlive(this.restoredPid))
        return { state: isAlive(this.restoredPid) ? 'unfilled' : 'aborted', ...pid, detail: `the copy (pid ${this.restoredPid}) ran, ` +
          'but its memory never all arrived: it is stopped for good' };
      this.log(`abort decided through a resolve connection: killing the stopped copy (pid ${this.restoredPid}), its memory incomplete`);
      await discardUnfilledCopy(this.agent.opts.dir, this.id, this.restoredPid);
      return { state: 'aborted', ...pid, detail: 'the copy, stopped for lack of its memory, was killed' };
    }
    // Postcopy: the original holds memory the copy still lacks; it must not be given up before the fill ends.
    if (this.postcopy && this.state === 'filling')
      return { state: 'in-progress', ...pid, detail: `the copy (pid ${this.restoredPid}) runs while its memory arrives from the source` };
    if (copyRan(this.state)) return { state: 'running', ...pid, detail: `the copy runs as pid ${this.restoredPid}` };
    if (this.state === 'aborted') return { state: 'aborted', detail: 'the session failed here; its copy never ran' };
    if (!this.decide) {
      if (decide !== 'abort') return { state: 'in-progress', detail: `session ${this.id} is in state ${this.state}` };
      // The source holds its original (it runs again): whatever is restored here must never run.
      // The session ends now, or, in the middle of a restore, as soon as the copy exists.
      this.log('abort decided through a resolve connection while in state ' + this.state);
      this.abortRequested = true;
      this.conn.close();
      return this.settledAs;
    }
    if (decide === 'query') return { state: 'stopped', ...pid, detail: `the copy (pid ${this.restoredPid}) waits stopped for commit or abort` };
    this.log(`${decide} decided through a resolve connection`);
    this.decide({ decide, code: 'failed', why: `the source aborted the session (resolve)` });
    return this.settledAs;
  }

  /** Postcopy's pages file goes (what the server did not give back yet) once the session ends. */
  private async closePostcopy(): Promise<void> {
    const pc = await Promise.race([this.postcopy!, new Promise<undefined>((r) => setImmediate(() => r(undefined)))]);
    pc?.sourceGone();
    pc?.close();
    if (this.postcopyDir) fs.rmSync(this.postcopyDir, { recursive: true, force: true });
  }

  /** The restored copy, if any, never ran: kill it so only the source's original lives. */
  private async rollback(): Promise<void> {
    const recovery = DESTINATION_FAILURE[this.state as keyof typeof DESTINATION_FAILURE];
    this.sm.to('aborted');
    this.data?.abort();
    if (recovery === 'kill-copy' && this.restoredPid > 0 && isAlive(this.restoredPid)) {
      const pids = treePids(this.restoredPid);
      signalAll(pids, 'SIGKILL');
      await waitGone(this.restoredPid, 5000);
    }
    await this.lazyPages?.kill();
    await this.container?.rollback().catch((e) => this.log(`container clean-up: ${asPhaulError(e).message}`));
    // Only a session that restored (or began to) has a copy to speak of; before that, `unknown` says the same.
    if (recovery === 'kill-copy') {
      try {
        recordOutcome(this.agent.opts.dir, this.id, { outcome: 'aborted', ...(this.restoredPid > 0 ? { pid: this.restoredPid } : {}) });
      } catch (e) {
        this.log(`cannot record the session's outcome: ${asPhaulError(e).message}`);
      }
    }
    this.settle({ state: 'aborted', detail: 'the session failed here; its copy never ran and is gone' });
  }
}

/** Pre-copy modes: the number of data streams `prepare` announced (required there). */
function streamsOf(prep: Prepare): number {
  if (prep.streams === undefined) throw new PhaulError('protocol', "message 'prepare' has no 'streams'");
  return prep.streams;
}

/** Emits 'log' (string), 'state' (SessionStateEvent), 'migrated' and 'filled' ({ session, pid, ... }). */
export class DestinationAgent extends EventEmitter {
  readonly sessions = new Map<string, DestSession>();
  readonly limits: AdmissionLimits;
  readonly budget: SessionBudget;
  readonly pending: PendingConnections;
  private server?: net.Server;

  constructor(readonly opts: DestinationOptions) {
    super();
    this.limits = { ...DEFAULT_LIMITS, ...opts.limits };
    this.budget = new SessionBudget(this.limits);
    this.pending = new PendingConnections(this.limits);
  }

  async listen(): Promise<{ host: string; port: number }> {
    fs.mkdirSync(this.opts.dir, { recursive: true, mode: 0o700 });
    await localCapabilities(); // fail now, not mid-migration, if CRIU is unusable
    const claims = sweepDeadClaims();
    claimDir(this.opts.dir);
    const swept = sweepLeftovers(this.opts.dir, [...new Set([this.opts.storeDir ?? '/dev/shm', os.tmpdir()])]);
    if (swept.sessionDirs + swept.stores + swept.stoppedCopies + swept.resumedCopies)
      this.emit('log', `removed what earlier agents left: ${swept.stoppedCopies} stopped copies (they never ran), ` +
        `${swept.sessionDirs} session directories, ${swept.stores} page stores` +
        (swept.resumedCopies ? `; resumed ${swept.resumedCopies} stopped copies whose commit was on record` : ''));
    if (claims) this.emit('log', `removed ${claims} claims on a --dir (in /run/phaul-fast) of agents that died`);
    // TLS is layered by hand on every accepted socket, so that connections
    // still in their TLS handshake count as pending too.
    const srv = this.server = net.createServer((sock) => { this.accept(sock).catch(() => undefined); });
    await new Promise<void>((resolve, reject) => {
      srv.once('error', (e: NodeJS.ErrnoException) =>
        reject(new PhaulError('network', `cannot listen on ${this.opts.host}:${this.opts.port}: ${e.code ?? e.message}`)));
      srv.listen(this.opts.port, this.opts.host, () => resolve());
    });
    const a = srv.address() as net.AddressInfo;
    return { host: a.address, port: a.port };
  }

  private async accept(raw: net.Socket): Promise<void> {
    raw.setNoDelay(true);
    // A source gone silent (a partition) is noticed, and its session ended, in seconds.
    boundSilence(raw);
    raw.on('error', () => undefined); // reported through FrameConn, or irrelevant before it
    const peer = `${raw.remoteAddress}:${raw.remotePort}`;
    this.pending.admit(raw);
    const deadline = setTimeout(() => raw.destroy(), HANDSHAKE_MS);
    let conn: FrameConn | undefined;
    try {
      let sock: net.Socket = raw;
      if (this.opts.tls) {
        const t = wrapServerSocket(raw, this.opts.tls, this.opts.token);
        await new Promise<void>((resolve, reject) => {
          t.once('secure', () => resolve());
          t.once('error', (e) => reject(new PhaulError('auth', `TLS handshake failed: ${e.message}`)));
          t.once('close', () => reject(new PhaulError('network', 'closed during the TLS handshake')));
        });
        sock = t;
      }
      conn = new FrameConn(sock, `source ${peer}`);
      const auth = await authenticateServer(conn, this.opts.token);
      clearTimeout(deadline);
      this.pending.settle(raw);
      if (auth.role === 'control') {
        if (this.sessions.size >= this.limits.maxSessions) {
          conn.send({ t: 'error', code: 'busy', message: `the destination already runs ${this.sessions.size} sessions (serve --max-sessions)` });
          throw new PhaulError('busy', `refused a session from ${peer}: ${this.sessions.size} already running`);
        }
        const s = new DestSession(this, conn);
        this.sessions.set(s.id, s);
        auth.welcome(s.id);
        await s.run();
        return;
      }
      if (auth.role === 'resolve') {
        auth.welcome(auth.session);
        await this.resolve(conn, auth.session);
        return;
      }
      const s = this.sessions.get(auth.session);
      if (!s || !s.wantsData()) {
        conn.send({ t: 'error', code: 'protocol', message: 'no session is waiting for this data connection' });
        throw new PhaulError('protocol', `data connection for unknown session from ${peer}`);
      }
      auth.welcome(auth.session);
      s.attachData(conn);
    } catch (err) {
      clearTimeout(deadline);
      this.emit('log', `connection from ${peer}: ${asPhaulError(err).message}`);
      if (conn) conn.close();
      else raw.destroy();
    }
  }

  /** Answers a `resolve` connection: what became of session `id` (docs/PROTOCOL.md, "Resolving a session in doubt"). */
  private async resolve(conn: FrameConn, id: string): Promise<void> {
    const m = await conn.expect('resolve', HANDSHAKE_MS);
    const live = this.sessions.get(id);
    let r: Omit<Resolution, 't'>;
    if (live) r = await live.resolve(m.decide);
    else {
      const rec = readOutcome(this.opts.dir, id);
      const unfilled = unfilledCopy(rec);
      if (unfilled && m.decide === 'abort') {
        await discardUnfilledCopy(this.opts.dir, id, unfilled);
        r = { state: 'aborted', pid: unfilled, detail: 'the copy, stopped for lack of its memory, was killed' };
      } else if (unfilled) r = { state: 'unfilled', pid: unfilled, detail: `the copy (pid ${unfilled}) ran, but its memory never all arrived: it is stopped for good` };
      else if (unfilledAndGone(rec)) r = { state: 'aborted', detail: 'the copy, stopped for lack of its memory, is gone' };
      else if (rec?.outcome === 'committed') r = { state: 'running', ...(rec.pid ? { pid: rec.pid } : {}), detail: 'the copy was resumed here' };
      else if (rec?.outcome === 'aborted') r = { state: 'aborted', detail: 'the session failed here; its copy never ran' };
      else r = { state: 'unknown', detail: `no session ${id} here: no copy of it was ever resumed by this agent's --dir` };
    }
    this.emit('log', `resolve ${m.decide} for session ${id.slice(0, 8)}: ${r.state}`);
    conn.send({ t: 'resolution', ...r });
    await conn.next(5_000).catch(() => undefined); // let the source close first
  }

  async close(): Promise<void> {
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
    releaseDir(this.opts.dir);
  }
}
