// The source side of a migration (`phaul-fast migrate`).
//
// stop-copy: CRIU dumps the tree straight into the destination's page server
// (through our zero-copy relay); at CRIU's post-dump hook the tree is frozen
// and fully dumped, and we hold CRIU there while the destination restores a
// stopped copy. Only when that copy exists do we let CRIU finish (leaving the
// original stopped), tell the destination to resume, and kill the original
// once the destination confirms it runs. Any failure before the commit makes
// CRIU (or us) resume the original: a workload is never lost and never runs twice.
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { asPhaulError, PhaulError } from '../errors';
import { authenticateClient } from '../protocol/auth';
import { FrameConn, int, Message } from '../protocol/frames';
import { runCriu, criuLogTail } from '../criu/rpc';
import { incompatibility, localCapabilities, parseCapabilities } from './capabilities';
import { openDataChannelClient, SourceDataChannel } from './data-channel';
import { isAlive, procState, signalAll, treePids, waitGone } from './process-tree';

export type Mode = 'stop-copy';
export const MODES: readonly Mode[] = ['stop-copy'];

export interface MigrateOptions {
  pid: number;
  to: { host: string; port: number };
  token: Buffer;
  mode?: Mode;
  /** TLS to the destination; `ca` pins its certificate authority. */
  tls?: { ca?: Buffer; insecure?: boolean; servername?: string };
  /** Dump established TCP connections (needs the nftables network lock). */
  tcpEstablished?: boolean;
  extUnixSk?: boolean;
  shellJob?: boolean;
  fileLocks?: boolean;
  linkRemap?: boolean;
  /** Where CRIU writes the non-memory images on the source (default: a temp dir). */
  workDir?: string;
  keepImages?: boolean;
  connectTimeoutMs?: number;
  restoreTimeoutMs?: number;
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
}

export interface FailureReport {
  ok: false;
  error: { code: string; message: string };
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

/** One migration. Emits 'phase' ({ phase, ms }) as it goes and 'log' (string). */
export class Migration extends EventEmitter {
  private readonly t0 = Date.now();
  private last = this.t0;
  readonly phases: Record<string, number> = {};

  constructor(readonly opts: MigrateOptions) {
    super();
  }

  private phase(name: string): void {
    const now = Date.now();
    this.phases[name] = now - this.last;
    this.last = now;
    this.emit('phase', { phase: name, ms: this.phases[name] } satisfies PhaseEvent);
  }

  async run(): Promise<MigrationReport> {
    const o = this.opts;
    const mode = o.mode ?? 'stop-copy';
    if (!MODES.includes(mode)) throw new MigrationError(new PhaulError('usage', `mode ${mode} is not available (have: ${MODES.join(', ')})`), true);
    if (!Number.isInteger(o.pid) || o.pid <= 1 || o.pid === process.pid) throw new MigrationError(new PhaulError('usage', `cannot migrate pid ${o.pid}`), true);
    if (!isAlive(o.pid)) throw new MigrationError(new PhaulError('notFound', `no running process ${o.pid}`), true);

    let conn: FrameConn | undefined;
    let data: SourceDataChannel | undefined;
    const workDir = fs.mkdtempSync(path.join(o.workDir ?? os.tmpdir(), 'phaul-fast-'));
    // Where the original stands: CRIU resumes it on any failure up to and
    // including the post-dump hook; after that it is ours to resume or kill.
    let originalHeldByUs = false;
    let commitSent = false;
    try {
      const ours = await localCapabilities();
      conn = await this.connect();
      const session = await authenticateClient(conn, o.token, 'control');
      this.phase('connect');

      conn.send({ t: 'caps', caps: ours, mode });
      const theirs = parseCapabilities(await conn.expect('caps'));
      if (!theirs) throw new PhaulError('protocol', 'destination sent malformed capabilities');
      const why = incompatibility(ours, theirs, mode);
      if (why) throw new PhaulError('incompatible', why);
      const criuFlags = {
        tcpEstablished: !!o.tcpEstablished, extUnixSk: !!o.extUnixSk, shellJob: !!o.shellJob,
        fileLocks: !!o.fileLocks, linkRemap: !!o.linkRemap,
      };
      conn.send({ t: 'prepare', mode, criu: criuFlags });
      await conn.expect('prepared');

      const dconn = await this.connect();
      await authenticateClient(dconn, o.token, 'data', session);
      data = openDataChannelClient(dconn);
      this.phase('handshake');

      let freezeAt = 0;
      let restoredPid = 0;
      let imageBytes = 0;
      const control = conn;
      const res = await runCriu(
        {
          type: 'dump',
          imagesDir: workDir,
          logFile: 'dump.log',
          opts: {
            pid: o.pid,
            psFd: data.criuFd,
            notifyScripts: true,
            leaveStopped: true,
            networkLock: o.tcpEstablished ? 'nftables' : undefined,
            ...criuFlags,
          },
        },
        {
          inheritFds: [data.criuFd],
          onNotify: async (script) => {
            if (script === 'pre-dump') {
              freezeAt = Date.now();
              this.phase('criu-start');
            } else if (script === 'post-dump') {
              this.phase('dump');
              imageBytes = this.sendImages(control, workDir);
              control.send({ t: 'restore' });
              this.phase('images');
              const r = await control.expect('restored', o.restoreTimeoutMs ?? 180_000);
              restoredPid = int(r, 'pid', 1, 1 << 22);
              this.phase('restore');
            }
            return true;
          },
        },
      );
      if (!res.success) {
        const tail = criuLogTail(path.join(workDir, 'dump.log'));
        throw new PhaulError('criu', `criu dump failed: ${tail || res.crErrmsg?.trim() || 'unknown error'}`);
      }
      originalHeldByUs = true;
      const original = treePids(o.pid);
      const relayed = await data.done.catch(() => ({ sent: 0 }));

      try {
        conn.send({ t: 'commit' });
        commitSent = true;
      } catch (e) {
        throw asPhaulError(e, 'network');
      }
      await conn.expect('running', 30_000);
      const runningAt = Date.now();
      this.phase('commit');
      signalAll(original, 'SIGKILL');
      originalHeldByUs = false;
      await waitGone(o.pid, 5000);
      conn.close();
      return {
        ok: true,
        mode,
        downtimeMs: runningAt - freezeAt,
        totalMs: runningAt - this.t0,
        bytesSent: relayed.sent + imageBytes,
        restoredPid,
        phases: this.phases,
      };
    } catch (err) {
      const e = asPhaulError(err);
      data?.abort();
      if (conn && !conn.closed) {
        try { conn.send({ t: 'abort', message: e.message }); } catch { /* gone */ }
        conn.close();
      }
      if (originalHeldByUs && !commitSent) {
        // CRIU finished and left the original stopped; the destination never got the commit.
        signalAll(treePids(o.pid), 'SIGCONT');
        originalHeldByUs = false;
      }
      if (originalHeldByUs) {
        const msg = `${e.message}; the destination did not confirm after the commit, so the original is left stopped ` +
          `(pid ${o.pid}): if the destination runs it, kill the original, otherwise resume it with SIGCONT`;
        throw new MigrationError(new PhaulError('lost', msg), false);
      }
      const resumed = isAlive(o.pid) && procState(o.pid) !== 'T';
      throw new MigrationError(e, resumed);
    } finally {
      if (!o.keepImages) fs.rmSync(workDir, { recursive: true, force: true });
    }
  }

  /** Sends every image CRIU wrote locally (pages went to the page server). */
  private sendImages(conn: FrameConn, dir: string): number {
    const CHUNK = 16 * 1024 * 1024;
    let bytes = 0;
    for (const name of fs.readdirSync(dir)) {
      if (name.endsWith('.log')) continue;
      const body = fs.readFileSync(path.join(dir, name));
      for (let off = 0; off === 0 || off < body.length; off += CHUNK) {
        conn.send({ t: 'image', name, data: body.subarray(off, off + CHUNK), append: off > 0 });
      }
      bytes += body.length;
    }
    return bytes;
  }

  private connect(): Promise<FrameConn> {
    const o = this.opts;
    const peer = `destination ${o.to.host}:${o.to.port}`;
    return new Promise((resolve, reject) => {
      const sock = o.tls
        ? tls.connect({ host: o.to.host, port: o.to.port, ca: o.tls.ca, rejectUnauthorized: !o.tls.insecure, servername: o.tls.servername })
        : net.connect({ host: o.to.host, port: o.to.port });
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new PhaulError('network', `cannot reach ${peer}: timed out`));
      }, o.connectTimeoutMs ?? 10_000);
      sock.once(o.tls ? 'secureConnect' : 'connect', () => {
        clearTimeout(timer);
        sock.removeAllListeners('error');
        (sock as net.Socket).setNoDelay(true);
        resolve(new FrameConn(sock, peer));
      });
      sock.once('error', (e: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(new PhaulError('network', `cannot reach ${peer}: ${e.code ?? e.message}`));
      });
    });
  }
}

export async function migrate(opts: MigrateOptions): Promise<MigrationReport> {
  return new Migration(opts).run();
}

export type { Message };
