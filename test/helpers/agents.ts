// Runs real phaul-fast agents (the CLI, as separate processes) inside test
// hosts, and cleans up after them.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { after, before } from 'node:test';
import { PACKAGE_ROOT } from '../../src/package-root';
import { createTwoHosts, Host, spawnIn, TwoHosts } from '../../src/testing/hosts';

export const CLI = path.join(PACKAGE_ROOT, 'dist', 'src', 'cli', 'main.js');

export function tempDir(tag: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `phaul-test-${tag}-`));
}

export function writeToken(dir: string, token = crypto.randomBytes(24).toString('hex')): string {
  const f = path.join(dir, `token-${crypto.randomBytes(4).toString('hex')}`);
  fs.writeFileSync(f, token + '\n', { mode: 0o600 });
  return f;
}

let nextPort = 7500 + (process.pid % 400);

export interface ServeAgent {
  proc: ChildProcess;
  port: number;
  addr: string;
  dir: string;
  stderr(): string;
  /** Ends the agent (SIGTERM, then SIGKILL) and waits for it. */
  stop(sig?: NodeJS.Signals): Promise<void>;
}

/** Starts `phaul-fast serve` in `host` and waits until it listens. */
export async function startServe(host: Host, tokenFile: string, dir: string, extra: string[] = [],
  env: Record<string, string> = {}): Promise<ServeAgent> {
  const port = nextPort++;
  const proc = spawnIn(host, [process.execPath, CLI, 'serve', '--listen', `${host.addr}:${port}`, '--dir', dir,
    '--token-file', tokenFile, ...extra], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let err = '';
  proc.stderr!.on('data', (d) => { err += d; });
  proc.stdout!.resume();
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const end = Date.now() + 15_000;
  while (!/listening on/.test(err)) {
    if (proc.exitCode !== null || Date.now() > end) throw new Error(`serve did not start: ${err.trim()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    proc, port, addr: host.addr, dir,
    stderr: () => err,
    async stop(sig: NodeJS.Signals = 'SIGTERM') {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill(sig);
      const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    },
  };
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
  /** The JSON object on the last line of stdout, if any. */
  json?: Record<string, any>;
}

/** Runs `phaul-fast ARGS` in `host`; resolves when it exits. */
/** `env`: added to the CLI's environment; `onStderr`: called with all of stderr so far, as it grows. */
export function runCli(host: Host, args: string[], timeoutMs = 120_000,
  opts: { env?: Record<string, string>; onStderr?: (err: string) => void } = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    const p = spawnIn(host, [process.execPath, CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...opts.env } });
    let out = '';
    let err = '';
    p.stdout!.on('data', (d) => { out += d; });
    p.stderr!.on('data', (d) => {
      err += d;
      opts.onStderr?.(err);
    });
    const t = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('close', (code, sig) => {
      clearTimeout(t);
      const last = out.trim().split('\n').pop() ?? '';
      let json: Record<string, any> | undefined;
      try { json = JSON.parse(last); } catch { /* not JSON */ }
      resolve({ code: code ?? (sig ? 128 : -1), stdout: out, stderr: err, json });
    });
  });
}

/** The inode of a process's network namespace, to tell which "host" it lives in. */
export function netnsOf(pid: number | 'self'): string {
  return fs.readlinkSync(`/proc/${pid}/ns/net`);
}

export function netnsOfPath(p: string): string {
  return `net:[${fs.statSync(p).ino}]`;
}

/** Two hosts with a destination agent serving in host b; see useTwoHostsWithServe. */
export interface TwoHostsWithServe {
  hosts: TwoHosts;
  /** The test's temp directory (holds the token; the agent's --dir is DIR/dest). */
  dir: string;
  token: string;
  serve: ServeAgent;
}

/**
 * Registers before/after hooks for the calling test file: before, two hosts
 * (namespaces named PREFIX-...), a temp directory (phaul-test-TAG-...) with a
 * token in it, and `phaul-fast serve` in host b; after, the agent is ended,
 * the namespaces removed and the directory deleted. Nothing happens when
 * `enabled` is false (not root). The fields are filled in by the before hook.
 */
export function useTwoHostsWithServe(opts: { prefix: string; tag: string; enabled: boolean }): TwoHostsWithServe {
  const fx = {} as TwoHostsWithServe;
  before(async () => {
    if (!opts.enabled) return;
    fx.hosts = await createTwoHosts({ prefix: opts.prefix });
    fx.dir = tempDir(opts.tag);
    fx.token = writeToken(fx.dir);
    fx.serve = await startServe(fx.hosts.b, fx.token, path.join(fx.dir, 'dest'));
  });
  after(async () => {
    if (!opts.enabled) return;
    await fx.serve?.stop();
    await fx.hosts?.destroy();
    fs.rmSync(fx.dir, { recursive: true, force: true });
  });
  return fx;
}
