// Shared by the fault tests (faults, resolve, fault-matrix): migrate run as a
// separate process in host a (so it can be signalled or killed on its own),
// and the checks every fault ends with.
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import type { ChildProcess } from 'node:child_process';
import { type Host, runIn, spawnIn } from '../../src/testing/hosts';
import type { MemWorkload } from '../../src/testing/workload';
import { isAlive, procState, sleep } from '../../src/testing/proc';
import { CLI } from './agents';

export interface MigrateResult {
  code: number;
  stderr: string;
  json?: Record<string, any>;
  ms: number;
}

export interface RunningMigrate {
  proc: ChildProcess;
  /** Resolves with the exit code, stderr and the JSON report. */
  done: Promise<MigrateResult>;
  stderr(): string;
  /** Resolves once stderr matches re (rejects if migrate exits first). */
  waitFor(re: RegExp, timeoutMs?: number): Promise<void>;
  /** Signals migrate's whole process group, as a Ctrl-C at a terminal does. */
  signalGroup(sig: NodeJS.Signals): void;
  /** The session id migrate logged. */
  session(): string;
}

/** Starts `phaul-fast migrate --json` in `host`, in its own process group; env adds to ours. */
export function startMigrate(host: Host, pid: number, to: string, tokenFile: string, extra: string[], env: Record<string, string> = {}): RunningMigrate {
  const t0 = Date.now();
  const p = spawnIn(host, [process.execPath, CLI, 'migrate', '--pid', String(pid), '--to', to, '--token-file', tokenFile, '--json', ...extra],
    { stdio: ['ignore', 'pipe', 'pipe'], detached: true, env: { ...process.env, ...env } });
  let out = '';
  let err = '';
  p.stdout!.on('data', (d) => { out += d; });
  p.stderr!.on('data', (d) => { err += d; });
  const done = new Promise<MigrateResult>((resolve) => {
    p.on('close', (code, sig) => {
      let json: Record<string, any> | undefined;
      try { json = JSON.parse(out.trim().split('\n').pop() ?? ''); } catch { /* none */ }
      resolve({ code: code ?? (sig ? 128 : -1), stderr: err, json, ms: Date.now() - t0 });
    });
  });
  return {
    proc: p,
    done,
    stderr: () => err,
    async waitFor(re, timeoutMs = 120_000) {
      const end = Date.now() + timeoutMs;
      while (!re.test(err)) {
        if (p.exitCode !== null || p.signalCode !== null || Date.now() > end) throw new Error(`migrate never printed ${re}: ${err}`);
        await sleep(20);
      }
    },
    signalGroup(sig) {
      process.kill(-p.pid!, sig);
    },
    session() {
      const m = /migrate: session ([0-9a-f]{24})/.exec(err);
      if (!m) throw new Error(`migrate logged no session: ${err}`);
      return m[1];
    },
  };
}

/** The original runs at the source, not stopped, and verifies every page. */
export async function expectRunsAtSource(w: MemWorkload): Promise<void> {
  assert.ok(isAlive(w.pid), 'the original is alive');
  // CRIU lets go of the tree as it fails; give it a moment to be running again.
  for (let i = 0; i < 50 && procState(w.pid) === 'T'; i++) await sleep(100);
  assert.notEqual(procState(w.pid), 'T', 'the original is not left stopped');
  const r = await w.report();
  assert.equal(r.ok, true, `the original verifies all its memory: ${JSON.stringify(r)}`);
  assert.equal(r.badPages, 0);
}

/** The copy runs at the destination as `pid`, the original is gone, and the copy verifies every page. */
export async function expectRunsAtDestination(w: MemWorkload, pid: number): Promise<void> {
  w.adopt(pid);
  for (let i = 0; i < 50 && isAlive(w.pid); i++) await sleep(100);
  assert.ok(!isAlive(w.pid), 'the original is gone');
  assert.ok(isAlive(pid), 'the copy is alive');
  assert.notEqual(procState(pid), 'T', 'the copy is not left stopped');
  const r = await w.report(pid);
  assert.equal(r.ok, true, `the copy verifies all its memory: ${JSON.stringify(r)}`);
  assert.equal(r.badPages, 0);
}

/** The destination ended the session and removed what it held. */
export async function destinationClean(dir: string, timeoutMs = 90_000): Promise<void> {
  const left = () => fs.readdirSync(dir);
  const end = Date.now() + timeoutMs;
  while (left().length && Date.now() < end) await sleep(200);
  assert.deepEqual(left(), [], 'the destination removed the session');
}

export async function nft(host: Host, script: string): Promise<void> {
  const r = await runIn(host, ['nft', '-f', '-'], { input: script });
  assert.equal(r.code, 0, r.stderr);
}
