// CRIU's lazy-pages daemon for a restore on this host (hybrid mode, design.md
// section 6 step 4). `criu restore --lazy-pages` maps the tree's private memory
// but copies none of it; the daemon receives the tasks' userfaultfds over
// `lazy-pages.socket` in the images directory, answers their page faults, and
// once the restore has finished copies every remaining page in the
// background. The restore then takes tens of milliseconds whatever the memory
// size; the filling happens while the workload already runs.
//
// The daemon runs in remote mode on a socketpair whose other end is served by
// a page source process reading the store's parent-image chain
// (src/transport/lazy-source-process.ts). Its local mode cannot be used: it
// reads pages that live in a parent image but never hands them to
// userfaultfd (CRIU 4.2 calls io_complete only on the top image), so a
// chain-composed restore hangs on the first such fault.
//
// Once the restored tree runs, its memory depends on both processes until
// they exit (a page never copied would read as zeros). So both run in their
// own session, apart from the agent: neither a Ctrl-C meant for the agent nor
// the agent's death ends them. They are killed only before the restored tree
// ever ran (a rollback).
import { spawn, ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { addon } from '../native';
import { PhaulError } from '../errors';
import { criuBinary } from './binary';
import { criuLogTail } from './rpc';

export interface LazyPagesOptions {
  /** The restore's images (pagemaps; the pages come from the source process). The restore must use the same directory. */
  imagesDir: string;
  criu?: string;
}

export interface PageSourceOptions {
  /** Top level of the store's parent-image chain (PageStore.writeChain). */
  chainTop: string;
  /** Page-server header size of this CRIU (24 before 4.2, 32 since). */
  headerSize: 24 | 32;
  /** Removed by the source process when it is done, if the agent is gone by then (nobody else would). */
  cleanup?: string[];
}

export const LAZY_PAGES_LOG = 'lazy-pages.log';
const SOURCE_SCRIPT = path.join(__dirname, '..', 'transport', 'lazy-source-process.js');

export class LocalLazyPages {
  private readonly child: ChildProcess;
  private readonly source: ChildProcess;
  private sourceStarted = false;
  readonly startedAt = Date.now();
  /** Resolves when the daemon listens for the restore. */
  readonly ready: Promise<void>;
  /** The daemon's exit code (null if killed by a signal); 0 once every page is in place. */
  readonly exited: Promise<number | null>;
  private sourceDone!: (code: number | null) => void;
  /** The page source's exit code: 0 once it served the daemon to the end (null: killed, or never started). */
  readonly sourceExited = new Promise<number | null>((r) => { this.sourceDone = r; });

  /**
   * Starts the daemon and the page source process. The daemon reads the
   * pagemaps only when the restore connects, and the source waits for
   * startSource() to name the chain, so both may start while the last pages
   * are still arriving: their start-up (30-45 ms each here) then stays out of
   * the pause. startSource() must follow before the restore.
   */
  constructor(readonly opts: LazyPagesOptions) {
    const [mine, theirs] = addon().streamSocketPair();
    const args = ['lazy-pages', '-D', opts.imagesDir, '--page-server', '--ps-socket', '3', '--status-fd', '4',
      '-o', LAZY_PAGES_LOG];
    this.child = spawn(opts.criu ?? criuBinary(), args,
      { stdio: ['ignore', 'ignore', 'ignore', theirs, 'pipe'], detached: true });
    fs.closeSync(theirs);
    const log = fs.openSync(path.join(opts.imagesDir, 'lazy-source.log'), 'a');
    try {
      this.source = spawn(process.execPath, [SOURCE_SCRIPT, '-', String(this.child.pid ?? 0)],
        { stdio: ['pipe', 'ignore', log, mine], detached: true });
    } finally {
      fs.closeSync(log);
      fs.closeSync(mine);
    }
    this.source.stdin!.on('error', () => undefined);
    this.source.on('error', () => undefined);
    this.source.on('exit', (code) => this.sourceDone(code));
    this.child.on('error', () => undefined);
    this.exited = new Promise((resolve) => this.child.on('exit', (code) => resolve(code)));
    this.ready = new Promise<void>((resolve, reject) => {
      (this.child.stdio[4] as NodeJS.ReadableStream).once('data', () => resolve());
      void this.exited.then((code) => reject(new PhaulError('criu',
        `criu lazy-pages exited ${code} before it was ready: ${this.logTail() || 'no log'}`)));
    });
    this.ready.catch(() => undefined);
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get sourcePid(): number | undefined {
    return this.source.pid;
  }

  /** Tells the page source where the store's chain is (once it is written); from then on it needs nothing of ours. */
  startSource(o: PageSourceOptions): void {
    if (this.sourceStarted) throw new PhaulError('failed', 'lazy-pages: page source already started');
    this.sourceStarted = true;
    this.source.stdin!.end(JSON.stringify({ top: o.chainTop, headerSize: o.headerSize, cleanup: o.cleanup ?? [], agentPid: process.pid }) + '\n');
  }

  logTail(): string {
    return criuLogTail(path.join(this.opts.imagesDir, LAZY_PAGES_LOG));
  }

  /** The page source's last words (its log, in the images directory). */
  sourceLogTail(): string {
    try {
      return fs.readFileSync(path.join(this.opts.imagesDir, 'lazy-source.log'), 'utf8').trim().split('\n').slice(-2).join('; ');
    } catch {
      return '';
    }
  }

  /** Ends the daemon and the page source. Only for a restored tree that never ran: it would lose its memory. */
  async kill(): Promise<void> {
    for (const c of [this.child, this.source]) {
      if (c.exitCode === null && c.signalCode === null) {
        try { c.kill('SIGKILL'); } catch { /* gone */ }
      }
    }
    await Promise.all([this.exited, this.sourceExited]);
  }
}
