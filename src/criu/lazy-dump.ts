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
//
// CRIU is started before the switchover and waits, not yet having frozen
// anything, in its pre-dump action (scripts/criu-gate.sh reads a FIFO): its
// process start-up (tens of ms, more on a loaded host) is then no part of the
// pause. freeze() opens the gate and resolves when the tree is frozen.
import { spawn, ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { addon } from '../native';
import { PhaulError } from '../errors';
import { criuBinary } from './binary';
import { CriuGate } from './gate';
import { criuFlagArgs, type CriuFlags } from './cli-flags';
import { criuLogTail } from './rpc';
import { encodePsHeader, PS_IOV_CLOSE } from './ps-header';
import { procState } from '../agent/process-tree';

export interface LazyDumpOptions extends CriuFlags {
  pid: number;
  imagesDir: string;
  /** More `criu dump` arguments (a container's root, external mounts, cgroups). */
  extraArgs?: string[];
  criu?: string;
  /** Page-server header size of this CRIU (24 before 4.2, 32 since). */
  headerSize: 24 | 32;
}


export class LazyDump {
  private readonly child: ChildProcess;
  private sock: number;
  private readonly gate: CriuGate;
  readonly startedAt = Date.now();
  /** When the tree was seen frozen. */
  frozenAt = 0;
  readyAt = 0;
  /** Resolves when the images are written and the tree is frozen. */
  readonly ready: Promise<void>;
  /** CRIU's exit code (null if killed by a signal). */
  readonly exited: Promise<number | null>;

  constructor(readonly opts: LazyDumpOptions) {
    const [mine, theirs] = addon().streamSocketPair();
    this.sock = mine;
    this.gate = new CriuGate(opts.imagesDir, 'pre-dump');
    const args = ['dump', '-t', String(opts.pid), '-D', opts.imagesDir, '--lazy-pages', '--ps-socket', '3',
      '--status-fd', '4', '--leave-stopped', '-o', 'dump.log', ...this.gate.args, ...criuFlagArgs(opts),
      ...(opts.extraArgs ?? [])];
    this.child = spawn('setpriv', ['--pdeathsig', 'SIGALRM', '--', opts.criu ?? criuBinary(), ...args],
      // detached: its own session, so a Ctrl-C at the terminal reaches only our
      // agent, which rolls back and tells CRIU (its parent-death signal stays).
      { stdio: ['ignore', 'ignore', 'pipe', theirs, 'pipe', mine], detached: true, env: this.gate.env(process.env) });
    fs.closeSync(theirs);
    let err = '';
    this.child.stderr!.on('data', (d) => { if (err.length < 4096) err += d; });
    this.exited = new Promise((resolve) => this.child.on('exit', (code) => { this.closeSocket(); this.gate.close(); resolve(code); }));
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

  /**
   * Opens the gate: CRIU goes on from its pre-dump action and freezes the
   * tree. Resolves when the tree's root is seen stopped under CRIU's ptrace
   * (polled every millisecond: CRIU tells nothing between here and its
   * images being ready), or when the images are ready, whichever comes first.
   */
  async freeze(): Promise<void> {
    // CRIU waited at its gate since the rounds began; if it gave up meanwhile, say why.
    if (this.child.exitCode !== null || this.child.signalCode !== null) {
      throw new PhaulError('criu', `criu dump ended before the switchover (${this.child.exitCode ?? this.child.signalCode}): ${this.logTail() || 'no log'}`);
    }
    this.gate.open();
    const pid = this.opts.pid;
    await new Promise<void>((resolve) => {
      let done = false;
      const finish = () => {
        if (done) return;
        done = true;
        clearInterval(timer);
        this.frozenAt = Date.now();
        resolve();
      };
      const timer = setInterval(() => {
        const st = procState(pid);
        if (st === 't' || st === 'T' || st === undefined) finish();
      }, 1);
      this.ready.then(finish, finish);
    });
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
    this.gate.close(); // a CRIU still at its gate reads end of file and stops without freezing
    if (this.child.exitCode === null && this.child.signalCode === null && this.child.pid) {
      try { process.kill(this.child.pid, 'SIGALRM'); } catch { /* gone */ }
    }
    const t = setTimeout(() => { try { this.child.kill('SIGKILL'); } catch { /* gone */ } }, 10_000);
    await this.exited;
    clearTimeout(t);
  }
}
