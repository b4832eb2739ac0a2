// phaul-fast:<mode> — through the CLI, as a user would run it:
//   D: phaul-fast serve --listen ADDR:PORT --dir DIR --token-file FILE   (once per cell)
//   S: phaul-fast migrate --pid PID --to ADDR:PORT --token-file FILE --mode MODE --json
// (a container: serve --runtime-root R2 --bundles B2 --cgroup-parent G2, and
// migrate --container ID --runtime-root R1 instead of --pid).
// The last stdout line of migrate is its report { ok, mode, downtimeMs,
// totalMs, bytesSent, restoredPid, phases, ... }. A mode the CLI does not
// offer, or rejects, makes the strategy unavailable rather than failed.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { PACKAGE_ROOT } from '../../src/package-root';
import { inHost, spawnIn } from '../../src/testing/hosts';
import { cpuSeconds, runCmd, signal, waitGone } from '../../src/testing/proc';
import { containerHosts } from '../workloads/container';
import { type PeerContext, type Peer, type RunFigures, type RunHooks, Unavailable } from './types';

// PHAUL_FAST_BENCH_CLI: another build's bin/phaul-fast.js, to measure it with this harness.
const CLI = [process.execPath, process.env.PHAUL_FAST_BENCH_CLI || path.join(PACKAGE_ROOT, 'bin', 'phaul-fast.js')];
const EXIT_USAGE = 2;
const EXIT_UNAVAILABLE = 3;

let offered: Promise<string[]> | null = null;
/** The modes `phaul-fast migrate --help` lists ("how to move memory: a, b"). */
export function offeredModes(): Promise<string[]> {
  offered ??= runCmd([...CLI, 'migrate', '--help'], { timeoutMs: 20_000 }).then((r) => {
    const m = /how to move memory: ([^(\n]+)/.exec(r.stdout);
    return r.code === 0 && m ? m[1].split(',').map((s) => s.trim()).filter((s) => s && s !== 'auto') : [];
  });
  return offered;
}

/**
 * Both engines use the same CRIU binary, or the comparison means nothing.
 * NODE_EXTRA_CA_CERTS (set on this machine for package registries) is left
 * out: Node parses that CA bundle at every start (~60 ms of CPU here), and
 * the bench's agents never check a certificate against a CA (plain TCP, or
 * --encrypt keyed by the token). An agent deployed without it pays nothing of the kind.
 */
const engineEnv = (ctx: PeerContext) => {
  const { NODE_EXTRA_CA_CERTS: _unused, ...env } = process.env;
  return { ...env, PHAUL_FAST_CRIU: ctx.criu };
};

interface MigrateReport {
  ok: boolean;
  mode?: string;
  downtimeMs?: number;
  totalMs?: number;
  bytesSent?: number;
  restoredPid?: number;
  phases?: Record<string, number>;
  /** Pre-copy modes: CPU of CRIU's dump inside the pause (PROTOCOL.md). */
  criuDumpCpu?: { criuMs?: number; parasiteMs?: number };
  rounds?: Array<{ pages: number; bytes: number; ms: number; dirtyRate: number }>;
  sourceReleasedMs?: number;
  frozenAt?: number;
  runningAt?: number;
  frozenRound?: Record<string, number>;
  /** Hybrid: from the freeze until the memory was filled. */
  filledMs?: number;
  /** Hybrid: the destination's lazy-pages server (src/native/lazy-fill.ts FillStats). */
  fill?: { fillMs?: number; copiedPages?: number; faultUs?: { p50?: number; p99?: number; max?: number } };
  error?: string;
  message?: string;
}

/** Where serve's page stores go, in the cell's directory (PeerContext.runDir of open()). */
export const STORE_DIR = 'stores';

export class PhaulFastPeer implements Peer {
  readonly name: string;
  private serve: ChildProcess | null = null;
  private serveLog = '';
  private tokenFile = '';
  /** serve's port: the one of the cell's context, not of each run's. */
  private port = 0;

  readonly mode: string;
  /** '+encrypt': both agents run with --encrypt (TLS keyed by the token). */
  private readonly encrypt: string[];

  constructor(strategy: string) {
    this.name = `phaul-fast:${strategy}`;
    this.mode = strategy.replace(/\+encrypt$/, '');
    this.encrypt = strategy.endsWith('+encrypt') ? ['--encrypt'] : [];
  }

  async open(ctx: PeerContext): Promise<void> {
    const modes = await offeredModes();
    if (!modes.includes(this.mode)) throw new Unavailable(`phaul-fast migrate offers ${modes.join(', ') || 'no modes'}`);
    const dir = path.join(ctx.runDir, 'serve');
    fs.mkdirSync(dir, { recursive: true });
    // Page stores inside the cell's directory (tmpfs), where the destination's memory is sampled.
    const stores = path.join(ctx.runDir, STORE_DIR);
    fs.mkdirSync(stores, { recursive: true });
    this.tokenFile = path.join(ctx.runDir, 'token');
    this.port = ctx.port;
    fs.writeFileSync(this.tokenFile, crypto.randomBytes(24).toString('hex') + '\n', { mode: 0o600 });
    // A container cell: the destination's runc state, bundles and cgroups are its own (bench/workloads/container.ts).
    const h = containerHosts(ctx.runDir);
    const containers = ctx.workloadKind === 'container'
      ? ['--runtime-root', h.runcDst, '--bundles', h.bundlesDst, '--cgroup-parent', h.cgDst] : [];
    const serve = spawnIn(ctx.dst, [...CLI, 'serve', '--listen', `${ctx.dst.addr}:${ctx.port}`, '--dir', dir,
      '--token-file', this.tokenFile, '--store-dir', stores, ...containers, ...this.encrypt], { stdio: ['ignore', 'ignore', 'pipe'], env: engineEnv(ctx) });
    this.serve = serve;
    serve.stderr!.on('data', (d) => { this.serveLog = (this.serveLog + d).slice(-4000); });
    // Ready when it says it listens (serve logs to stderr).
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`phaul-fast serve: not listening after 20 s: ${this.lastLog()}`)), 20_000);
      const onData = () => { if (/listening on/.test(this.serveLog)) { clearTimeout(t); serve.stderr!.off('data', onData); resolve(); } };
      serve.stderr!.on('data', onData);
      serve.once('exit', (code) => {
        clearTimeout(t);
        const why = `phaul-fast serve exited ${code}: ${this.lastLog()}`;
        reject(code === EXIT_UNAVAILABLE || code === EXIT_USAGE ? new Unavailable(why) : new Error(why));
      });
    });
  }

  private lastLog(): string {
    return this.serveLog.trim().split('\n').slice(-2).join(' | ');
  }

  async migrate(pid: number, ctx: PeerContext, hooks: RunHooks): Promise<RunFigures> {
    const servePid = this.serve?.pid ?? -1;
    const serveCpu0 = cpuSeconds(servePid);
    const t0 = performance.now();
    const what = ctx.container ? ['--container', ctx.container.id, '--runtime-root', containerHosts(ctx.container.cellDir).runcSrc] : ['--pid', String(pid)];
    const r = await runCmd(inHost(ctx.src, [...CLI, 'migrate', ...what, '--to', `${ctx.dst.addr}:${this.port}`,
      '--token-file', this.tokenFile, '--mode', this.mode, '--json', ...this.encrypt, ...(ctx.tcpClose ? ['--tcp-close'] : [])]), { timeoutMs: 120_000 + ctx.memMiB * 100, env: engineEnv(ctx) });
    const wall = performance.now() - t0;
    const serveCpu = cpuSeconds(servePid) - serveCpu0;
    const last = r.stdout.trim().split('\n').pop() ?? '';
    let rep: MigrateReport | null = null;
    try { rep = JSON.parse(last) as MigrateReport; } catch { /* no report: handled below */ }
    const why = (r.stderr.trim().split('\n').pop() ?? '').replace(/^phaul-fast migrate: /, '') || rep?.message || rep?.error || `exit ${r.code}`;
    if (!rep?.ok) {
      if (r.code === EXIT_USAGE || r.code === EXIT_UNAVAILABLE || /not available/.test(why)) throw new Unavailable(why);
      throw new Error(`phaul-fast migrate${r.code === null ? ' timed out' : ` exit ${r.code}`}: ${why}`);
    }
    const restoredPid = Number(rep.restoredPid);
    if (!Number.isInteger(restoredPid) || restoredPid <= 0) throw new Error(`phaul-fast migrate: report without restoredPid: ${last.slice(0, 200)}`);
    hooks.onRunning(restoredPid);
    const runningMs = Number(rep.totalMs ?? wall);
    const first = Array.isArray(rep.rounds) ? rep.rounds[0] : undefined;
    // Hybrid reports when its memory was filled, counted from the freeze: the
    // destination has everything then; the source was free once it ran.
    const totalMs = rep.filledMs !== undefined ? runningMs - Number(rep.downtimeMs) + Number(rep.filledMs) : runningMs;
    return {
      restoredPid,
      downtimeMs: Number(rep.downtimeMs),
      totalMs,
      sourceFreeMs: Number(rep.sourceReleasedMs ?? runningMs),
      offLinkBytes: 0,
      engineBytes: rep.bytesSent,
      // Pre-copy reports each round (the last is the final one, frozen); stop-copy is one pass.
      rounds: Array.isArray(rep.rounds) ? rep.rounds.length : 1,
      cpuS: r.cpuS + serveCpu,
      cpuSourceS: r.cpuS,
      ...(first && first.ms > 0 ? { copyMBps: first.bytes / 1e6 / (first.ms / 1000) } : {}),
      phases: rep.phases,
      ...(rep.frozenAt !== undefined && rep.runningAt !== undefined ? { frozenAt: Number(rep.frozenAt), runningAt: Number(rep.runningAt) } : {}),
      ...(rep.frozenRound ? { frozenRound: rep.frozenRound } : {}),
      ...(rep.criuDumpCpu ? { criuDumpCpuMs: Number(rep.criuDumpCpu.criuMs) + Number(rep.criuDumpCpu.parasiteMs) } : {}),
      ...(rep.fill ? { fill: {
        fillMs: Number(rep.fill.fillMs), pages: Number(rep.fill.copiedPages), faultP50Us: Number(rep.fill.faultUs?.p50),
        faultP99Us: Number(rep.fill.faultUs?.p99), faultMaxUs: Number(rep.fill.faultUs?.max),
      } } : {}),
    };
  }

  async close(): Promise<void> {
    const s = this.serve;
    this.serve = null;
    if (!s?.pid || s.exitCode !== null) return;
    signal(s.pid, 'SIGTERM');
    if (!(await waitGone(s.pid, 5_000))) signal(s.pid, 'SIGKILL');
    await waitGone(s.pid, 5_000);
  }
}
