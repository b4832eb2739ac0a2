// CRIU's lazy-pages daemon for a restore on this host (hybrid mode, design.md
// section 6 step 4). `criu restore --lazy-pages` maps the tree's private memory
// but copies none of it; the daemon receives the tasks' userfaultfds over
// `lazy-pages.socket` in the images directory, answers their page faults, and
// once the restore has finished copies every remaining page in the
// background. The restore then takes tens of milliseconds whatever the memory
// size; the filling happens while the workload already runs.
//
// The daemon runs in remote mode on a socketpair whose other end we serve
// from the page store (src/transport/lazy-page-server.ts). Its local mode
// cannot be used: it reads pages that live in a parent image but never hands
// them to userfaultfd (CRIU 4.2 calls io_complete only on the top image), so
// a chain-composed restore hangs on the first such fault.
//
// Once the restored tree runs, its memory depends on this process until it
// exits (a page it never copied would read as zeros). So it runs in its own
// session: neither a Ctrl-C meant for the agent nor the agent's death ends it.
// It is killed only before the restored tree ever ran (a rollback).
import { spawn, ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { native } from '../native';
import { PhaulError } from '../errors';
import { criuBinary } from './binary';
import { criuLogTail } from './rpc';

export interface LazyPagesOptions {
  /** The restore's images (pagemaps; the pages come over `pages`). The restore must use the same directory. */
  imagesDir: string;
  criu?: string;
}

export const LAZY_PAGES_LOG = 'lazy-pages.log';

export class LocalLazyPages {
  private readonly child: ChildProcess;
  /** Our end of the daemon's page-server connection: answer it with serveLazyPages. */
  readonly pages: net.Socket;
  readonly startedAt = Date.now();
  /** Resolves when the daemon listens for the restore. */
  readonly ready: Promise<void>;
  /** The daemon's exit code (null if killed by a signal); 0 once every page is in place. */
  readonly exited: Promise<number | null>;

  constructor(readonly opts: LazyPagesOptions) {
    const [mine, theirs] = native.streamSocketPair() as [number, number];
    const args = ['lazy-pages', '-D', opts.imagesDir, '--page-server', '--ps-socket', '3', '--status-fd', '4',
      '-o', LAZY_PAGES_LOG];
    this.child = spawn(opts.criu ?? criuBinary(), args,
      { stdio: ['ignore', 'ignore', 'ignore', theirs, 'pipe'], detached: true });
    fs.closeSync(theirs);
    this.pages = new net.Socket({ fd: mine, readable: true, writable: true });
    this.pages.on('error', () => undefined); // reported by serveLazyPages
    this.child.on('error', () => undefined);
    this.exited = new Promise((resolve) => this.child.on('exit', (code) => { this.pages.destroy(); resolve(code); }));
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

  logTail(): string {
    return criuLogTail(path.join(this.opts.imagesDir, LAZY_PAGES_LOG));
  }

  /** Ends the daemon. Only for a restored tree that never ran: it would lose its memory. */
  async kill(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      try { this.child.kill('SIGKILL'); } catch { /* gone */ }
    }
    await this.exited;
  }
}
