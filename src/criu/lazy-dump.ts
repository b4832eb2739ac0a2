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
// anything, in the open() of its log file, a FIFO (gate.ts): its process
// start-up (tens of ms, more on a loaded host) is then no part of the
// switchover. freeze() opens the gate and resolves when the tree is frozen.
import { spawn, ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { addon } from '../native';
import { PhaulError } from '../errors';
import { criuBinary } from './binary';
import { CriuLogGate } from './gate';
import { criuFlagArgs, type CriuFlags } from './cli-flags';
import { criuLogTailOf } from './rpc';
import { encodePsHeader, PS_IOV_CLOSE } from './ps-header';
import { procState, treePids } from '../agent/process-tree';

/** Nanoseconds the threads of `pids` have been on a CPU (/proc/PID/task/TID/schedstat); gone ones count 0. */
function onCpuNs(pids: number[]): number {
  let ns = 0;
  for (const pid of pids) {
    let tids: string[] = [];
    try { tids = fs.readdirSync(`/proc/${pid}/task`); } catch { continue; }
    for (const tid of tids) {
      try { ns += Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]) || 0; } catch { /* exited */ }
    }
  }
  return ns;
}

/** Peak resident memory of process `pid` (VmHWM, KiB); undefined once it is gone. */
function peakRssKiB(pid: number): number | undefined {
  try {
    const m = /^VmHWM:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch { return undefined; }
}

/** CPU spent between the tree seen frozen and CRIU's images ready: it grows with the tree's memory
 *  (CRIU reads /proc/PID/smaps and PAGEMAP_SCANs every page; a CRIU built without our changes
 *  also has its parasite pin every lazy page, and looks up every present page's struct page),
 *  and unlike wall time it barely moves when the host is loaded. */
export interface DumpCpu {
  /** CRIU's own process. */
  criuMs: number;
  /** The frozen tree's threads: only CRIU's parasite runs there meanwhile. */
  parasiteMs: number;
}

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
  private readonly gate: CriuLogGate;
  readonly startedAt = Date.now();
  /** When the tree was seen frozen. */
  frozenAt = 0;
  readyAt = 0;
  /** Set once the images are ready (when the freeze was seen before that). */
  dumpCpu?: DumpCpu;
  /** CRIU's peak resident memory when its images were ready (KiB). It stays near CRIU's own
   *  size only with the lazy iovec fix setup builds CRIU with (scripts/setup.sh): without it
   *  CRIU faults in up to 32 bytes per page of the tree's private mappings while the tree is frozen. */
  criuPeakRssKiB?: number;
  private cpuAtFreeze?: { criu: number; tree: number; pids: number[] };
  /** Resolves when the images are written and the tree is frozen. */
  readonly ready: Promise<void>;
  /** CRIU's exit code (null if killed by a signal). */
  readonly exited: Promise<number | null>;

  constructor(readonly opts: LazyDumpOptions) {
    const [mine, theirs] = addon().streamSocketPair();
    this.sock = mine;
    this.gate = new CriuLogGate(opts.imagesDir, 'dump.log');
    const args = ['dump', '-t', String(opts.pid), '-D', opts.imagesDir, '--lazy-pages', '--ps-socket', '3',
      '--status-fd', '4', '--leave-stopped', '-o', this.gate.name, ...criuFlagArgs(opts), ...(opts.extraArgs ?? [])];
    this.child = spawn('setpriv', ['--pdeathsig', 'SIGALRM', '--', opts.criu ?? criuBinary(), ...args],
      // detached: its own session, so a Ctrl-C at the terminal reaches only our
      // agent, which rolls back and tells CRIU (its parent-death signal stays).
      // CRIU_LAZY_PAGES_UNPINNED: the CRIU setup builds then leaves the lazy pages
      // where they are instead of pinning each into a pipe while the tree is
      // frozen, and keeps them all in one empty pipe (scripts/setup.sh
      // patch_criu_source: lazy-unpinned, lazy-pipeless). Those pipes serve only a
      // lazy-pages client asking CRIU for pages; we never ask (our store holds
      // every page, postcopy reads the frozen tree itself), we only CLOSE.
      { stdio: ['ignore', 'ignore', 'pipe', theirs, 'pipe', mine], detached: true,
        env: { ...process.env, CRIU_LAZY_PAGES_UNPINNED: '1' } });
    fs.closeSync(theirs);
    let err = '';
    this.child.stderr!.on('data', (d) => { if (err.length < 4096) err += d; });
    this.exited = new Promise((resolve) => this.child.on('exit', (code) => {
      this.closeSocket();
      void this.gate.close().then(() => resolve(code));
    }));
    this.ready = new Promise<void>((resolve, reject) => {
      (this.child.stdio[4] as NodeJS.ReadableStream).once('data', () => {
        this.readyAt = Date.now();
        this.criuPeakRssKiB = peakRssKiB(this.child.pid ?? -1);
        const at = this.cpuAtFreeze;
        if (at) {
          this.dumpCpu = { criuMs: Math.round((onCpuNs([this.child.pid ?? -1]) - at.criu) / 1e6),
            parasiteMs: Math.round((onCpuNs(at.pids) - at.tree) / 1e6) };
        }
        resolve();
      });
      void this.exited.then((code) => reject(new PhaulError('criu',
        `criu dump exited ${code} before its images were ready: ${this.logTail() || err.trim() || 'no log'}`)));
    });
    this.ready.catch(() => undefined);
    this.child.on('error', () => undefined);
  }

  logTail(): string {
    return criuLogTailOf(this.gate.text());
  }

  /**
   * Opens the gate: CRIU goes on from its log's open and freezes the tree. Resolves when the tree's root is seen stopped under CRIU's ptrace
   * (polled every millisecond: CRIU tells nothing between here and its
   * images being ready), or when the images are ready, whichever comes first.
   */
  async freeze(): Promise<void> {
    // CRIU waited at its gate since the rounds began; if it ended meanwhile, say why.
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
        if (!this.readyAt) {
          const pids = treePids(pid);
          this.cpuAtFreeze = { criu: onCpuNs([this.child.pid ?? -1]), tree: onCpuNs(pids), pids };
        }
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
    // SIGALRM to a CRIU still at its gate ends it (no handler yet) before it touched anything.
    if (this.child.exitCode === null && this.child.signalCode === null && this.child.pid) {
      try { process.kill(this.child.pid, 'SIGALRM'); } catch { /* gone */ }
    }
    const t = setTimeout(() => { try { this.child.kill('SIGKILL'); } catch { /* gone */ } }, 10_000);
    await this.exited;
    clearTimeout(t);
  }
}
