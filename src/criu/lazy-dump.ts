// CRIU's lazy dump as the switchover of pre-copy (design.md 5b): CRIU freezes
// the tree and writes every image except the pages of lazy VMAs, then waits
// for a lazy-pages client that never comes, holding the tree frozen. That wait
// is our decision point:
//   commit   = close the page-server socket: CRIU exits 0 and, with
//              --leave-stopped, leaves the tree stopped for us to kill;
//   rollback = SIGALRM: CRIU exits 1 and the tree resumes, untouched.
// The CLI is used (not RPC) because only the CLI takes a page-server socket in
// lazy mode (--ps-socket); a TCP --port would let anyone who connects end the
// dump "successfully".
import { spawn, ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { native } from '../native';
import { PhaulError } from '../errors';
import { criuBinary } from './binary';
import { criuLogTail } from './rpc';

export interface LazyDumpOptions {
  pid: number;
  imagesDir: string;
  tcpEstablished?: boolean;
  extUnixSk?: boolean;
  shellJob?: boolean;
  fileLocks?: boolean;
  linkRemap?: boolean;
  criu?: string;
}

export class LazyDump {
  private readonly child: ChildProcess;
  private sock: number;
  readonly startedAt = Date.now();
  readyAt = 0;
  /** Resolves when the images are written and the tree is frozen. */
  readonly ready: Promise<void>;
  /** CRIU's exit code (null if killed by a signal). */
  readonly exited: Promise<number | null>;

  constructor(readonly opts: LazyDumpOptions) {
    const [mine, theirs] = native.streamSocketPair() as [number, number];
    this.sock = mine;
    const args = ['dump', '-t', String(opts.pid), '-D', opts.imagesDir, '--lazy-pages', '--ps-socket', '3',
      '--status-fd', '4', '--leave-stopped', '-o', 'dump.log'];
    if (opts.tcpEstablished) args.push('--tcp-established', '--network-lock', 'nftables');
    if (opts.extUnixSk) args.push('--ext-unix-sk');
    if (opts.shellJob) args.push('--shell-job');
    if (opts.fileLocks) args.push('--file-locks');
    if (opts.linkRemap) args.push('--link-remap');
    this.child = spawn(opts.criu ?? criuBinary(), args, { stdio: ['ignore', 'ignore', 'pipe', theirs, 'pipe'] });
    fs.closeSync(theirs);
    let err = '';
    this.child.stderr!.on('data', (d) => { if (err.length < 4096) err += d; });
    this.exited = new Promise((resolve) => this.child.on('exit', (code) => { this.closeSocket(); resolve(code); }));
    this.ready = new Promise<void>((resolve, reject) => {
      (this.child.stdio[4] as NodeJS.ReadableStream).once('data', () => { this.readyAt = Date.now(); resolve(); });
      void this.exited.then((code) => reject(new PhaulError('criu',
        `criu dump exited ${code} before its images were ready: ${this.logTail() || err.trim() || 'no log'}`)));
    });
    this.ready.catch(() => undefined);
    this.child.on('error', () => undefined);
  }

  logTail(): string {
    return criuLogTail(path.join(this.opts.imagesDir, 'dump.log'));
  }

  private closeSocket(): void {
    if (this.sock >= 0) {
      native.closeFd(this.sock);
      this.sock = -1;
    }
  }

  /** Lets CRIU finish: the tree stays stopped (ours to kill once the destination runs it). */
  async commit(): Promise<void> {
    this.closeSocket();
    const code = await this.exited;
    if (code !== 0) throw new PhaulError('criu', `criu dump ended with ${code} at commit: ${this.logTail()}`);
  }

  /** Makes CRIU resume the tree as it was. Safe to call at any time and twice. */
  async rollback(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null && this.child.pid) {
      try { process.kill(this.child.pid, 'SIGALRM'); } catch { /* gone */ }
    }
    const t = setTimeout(() => { try { this.child.kill('SIGKILL'); } catch { /* gone */ } }, 10_000);
    await this.exited;
    clearTimeout(t);
  }
}
