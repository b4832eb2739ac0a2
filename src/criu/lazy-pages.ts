// The lazy-pages server for a restore on this host (hybrid mode,
// docs/DESIGN.md section 8). `criu restore --lazy-pages` maps the tree's private memory
// but copies none of it; the server receives the tasks' userfaultfds over
// `lazy-pages.socket` in the images directory, answers their page faults, and
// once the restore has finished copies every remaining page in the
// background. The restore then takes tens of milliseconds whatever the memory
// size; the filling happens while the workload already runs.
//
// The server is ours (src/transport/lazy-fill-process.ts around
// native/lazy_fill.cc), not CRIU's `criu lazy-pages`: that daemon keeps lazy
// ranges in linked lists and, after pre-copy rounds cut memory into many
// ranges, spends its time walking them (~3 MB/s at 4 GiB), and its local mode
// cannot read pages that live in a parent image.
//
// Once the restored tree runs, its memory depends on the server until it
// exits (a page never copied would read as zeros). So it runs in its own
// session, apart from the agent: neither a Ctrl-C meant for the agent nor the
// agent's death ends it. It is killed only before the restored tree ever ran
// (a rollback).
import { spawn, ChildProcess } from 'node:child_process';
import type { Duplex } from 'node:stream';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PhaulError } from '../errors';
import type { FillStats } from '../native';

export interface LazyPagesOptions {
  /** The restore's images (its pagemaps say which pages are lazy). The restore must use the same directory. */
  imagesDir: string;
  /** Background copy threads (default: the CPUs, 2 to 4). */
  threads?: number;
  /** Postcopy: the pages arrive while the tree runs; `control` says which (src/postcopy/destination.ts). */
  postcopy?: boolean;
}

export interface FillSource {
  /** Top level of the store's parent-image chain (PageStore.writeChain); or, postcopy: */
  chainTop?: string;
  /** the pages file, filled as pages arrive (src/postcopy/layout.ts numbers its slots). */
  pagesFile?: string;
  /** Removed by the server when it is done, if the agent is gone by then (nobody else would). */
  cleanup?: string[];
}

export const LAZY_FILL_LOG = 'lazy-fill.log';
const SERVER_SCRIPT = path.join(__dirname, '..', 'transport', 'lazy-fill-process.js');

export class LazyPagesServer {
  private readonly child: ChildProcess;
  private started = false;
  readonly startedAt = Date.now();
  /** Resolves when the server listens for the restore. */
  readonly ready: Promise<void>;
  /** The server's exit code (null if killed by a signal); 0 once every page is in place. */
  readonly exited: Promise<number | null>;
  /** Set when the server says every page is in place. */
  stats?: FillStats;
  private failedWith!: (why: string) => void;
  /**
   * How the fill ended: every page in place (ok, the server exited 0), or
   * not: the server said it failed (it then holds the tree's userfaultfds,
   * so faults wait, until it is killed) or died.
   */
  readonly outcome: Promise<{ ok: boolean; why: string }>;

  /**
   * Starts the server. It waits for start() to name the chain, so it may
   * start while the last pages are still arriving: its start-up (~40 ms) then
   * stays out of the pause. start() must follow before the restore.
   */
  constructor(readonly opts: LazyPagesOptions) {
    const threads = opts.threads ?? Math.max(2, Math.min(4, os.cpus().length));
    const log = fs.openSync(path.join(opts.imagesDir, LAZY_FILL_LOG), 'a');
    try {
      this.child = spawn(process.execPath, [SERVER_SCRIPT, opts.imagesDir, String(threads)],
        { stdio: opts.postcopy ? ['pipe', 'pipe', log, 'pipe'] : ['pipe', 'pipe', log], detached: true });
    } finally {
      fs.closeSync(log);
    }
    this.child.stdin!.on('error', () => undefined);
    this.child.on('error', () => undefined);
    // 'close', not 'exit': the "filled" line must have been read by then.
    this.exited = new Promise((resolve) => this.child.on('close', (code) => resolve(code)));
    let out = '';
    this.ready = new Promise<void>((resolve, reject) => {
      this.child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if (/^ready$/m.test(out)) resolve();
        const m = /^filled (\{.*\})$/m.exec(out);
        if (m && !this.stats) this.stats = JSON.parse(m[1]) as FillStats;
        const f = /^failed (\{.*\})$/m.exec(out);
        if (f) this.failedWith(String((JSON.parse(f[1]) as { error?: unknown }).error ?? 'failed'));
      });
      void this.exited.then((code) => reject(new PhaulError('criu',
        `the lazy-pages server exited ${code} before it was ready: ${this.logTail() || 'no log'}`)));
    });
    this.ready.catch(() => undefined);
    this.outcome = new Promise((resolve) => {
      this.failedWith = (why) => resolve({ ok: false, why });
      void this.exited.then((code) => resolve(code === 0 && this.stats
        ? { ok: true, why: '' }
        : { ok: false, why: `the lazy-pages server exited ${code}: ${this.logTail() || 'no log'}` }));
    });
  }

  /** Postcopy: the server's control socket (native/lazy_fill.h ControlRecord, both ways). */
  get control(): Duplex | undefined {
    return this.opts.postcopy ? (this.child.stdio[3] as Duplex) : undefined;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Tells the server where the store's chain is (once it is written); from then on it needs nothing of ours. */
  start(o: FillSource): void {
    if (this.started) throw new PhaulError('failed', 'lazy-pages server already started');
    this.started = true;
    const from = o.pagesFile !== undefined ? { postcopy: { file: o.pagesFile } } : { top: o.chainTop };
    const line = JSON.stringify({ ...from, cleanup: o.cleanup ?? [], agentPid: process.pid }) + '\n';
    // Postcopy: stdin stays open to name the tree once restored (tree()).
    if (o.pagesFile !== undefined) this.child.stdin!.write(line);
    else this.child.stdin!.end(line);
  }

  /**
   * Postcopy: the restored tree's root. Should this agent die before every
   * page arrived, the server stops the tree itself (no more pages can come).
   */
  tree(pid: number): void {
    this.child.stdin!.end(JSON.stringify({ tree: pid }) + '\n');
  }

  /** The server's last words (its log, in the images directory). */
  logTail(): string {
    try {
      return fs.readFileSync(path.join(this.opts.imagesDir, LAZY_FILL_LOG), 'utf8').trim().split('\n').slice(-2).join('; ');
    } catch {
      return '';
    }
  }

  /** Ends the server. Only for a restored tree that never ran: it would lose its memory. */
  async kill(): Promise<void> {
    const c = this.child;
    if (c.exitCode === null && c.signalCode === null) {
      try { c.kill('SIGKILL'); } catch { /* gone */ }
    }
    await this.exited;
  }
}
