// CRIU's lazy dump as the switchover of pre-copy (docs/DESIGN.md section 6): CRIU freezes
// the tree and writes every image except the pages of lazy VMAs, then waits
// for a lazy-pages client that never comes, holding the tree frozen. That wait
// is our decision point:
//   commit   = send the page-server CLOSE command: CRIU exits 0 and, with
//              --leave-stopped, leaves the tree stopped for us to kill;
//   rollback = SIGALRM: CRIU exits 1 and the tree resumes, untouched.
// In lazy mode CRIU also takes EOF on its socket as "done": if our agent died
// and the kernel closed our end, CRIU would commit a migration nobody
// finished. So CRIU holds our end too (no EOF can come), and it runs with
// SIGALRM as its parent-death signal: our death is a rollback.
// The CLI is used (not RPC) because only the CLI takes a page-server socket in
// lazy mode (--ps-socket); a TCP --port would let anyone who connects end the
// dump "successfully".
import { spawn, ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { addon } from '../native';
import { PhaulError } from '../errors';
import { criuBinary } from './binary';
import { criuLogTail } from './rpc';
import { encodePsHeader, PS_IOV_CLOSE } from '../transport/lazy-page-server';

export interface LazyDumpOptions {
  pid: number;
  imagesDir: string;
  tcpEstablished?: boolean;
  extUnixSk?: boolean;
  shellJob?: boolean;
  fileLocks?: boolean;
  linkRemap?: boolean;
  criu?: string;
  /** Page-server header size of this CRIU (24 before 4.2, 32 since). */
  headerSize: 24 | 32;
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
    const [mine, theirs] = addon().streamSocketPair();
    this.sock = mine;
    const args = ['dump', '-t', String(opts.pid), '-D', opts.imagesDir, '--lazy-pages', '--ps-socket', '3',
      '--status-fd', '4', '--leave-stopped', '-o', 'dump.log'];
    if (opts.tcpEstablished) args.push('--tcp-established', '--network-lock', 'nftables');
    if (opts.extUnixSk) args.push('--ext-unix-sk');
    if (opts.shellJob) args.push('--shell-job');
    if (opts.fileLocks) args.push('--file-locks');
    if (opts.linkRemap) args.push('--link-remap');
    this.child = spawn('setpriv', ['--pdeathsig', 'SIGALRM', '--', opts.criu ?? criuBinary(), ...args],
      // detached: its own session, so a Ctrl-C at the terminal reaches only our
      // agent, which rolls back and tells CRIU (its parent-death signal stays).
      { stdio: ['ignore', 'ignore', 'pipe', theirs, 'pipe', mine], detached: true });
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
      addon().closeFd(this.sock);
      this.sock = -1;
    }
  }

  /** Lets CRIU finish: the tree stays stopped (ours to kill once the destination runs it). */
  async commit(): Promise<void> {
    const head = encodePsHeader({ cmd: PS_IOV_CLOSE, nrPages: 0, vaddr: 0, dstId: 0 }, this.opts.headerSize);
    if (this.sock < 0) throw new PhaulError('criu', 'criu dump already ended');
    fs.writeSync(this.sock, head);
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
