// What a source keeps on disk while CRIU or we hold its workload, so that
// `phaul-fast resolve SESSION` can finish a session whose `migrate` died or
// lost its destination (src/agent/resolve.ts): which destination, which
// processes are the original (pid and start time, so a recycled pid is never
// signalled), and how far the session got. Written from the moment CRIU takes
// the tree, removed when the session ends with one running copy (done, rolled
// back); kept when it ends in doubt (`lost`) or the agent dies.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { isAlive, procState, startTime, treePids } from './process-tree';
import type { SourceState } from './source-states';
import { runPath } from './run-dir';
import type { ContainerSpec } from '../container/source';

export interface OriginalProcess {
  pid: number;
  startTime: number;
}

export interface SourceRecord {
  session: string;
  /** The `migrate` process that wrote it. */
  agentPid: number;
  to: { host: string; port: number };
  /** How the connections were protected: resolve connects the same way. */
  tls?: 'psk' | 'cert';
  /** The tree's root and its processes when last written. */
  root: number;
  original: OriginalProcess[];
  state: SourceState;
  /** CRIU locked the tree's network for the dump (--tcp-established, containers): an nftables table in
   *  `netns` (default: the root's namespace) and TCP sockets in repair mode, to be lifted before a resume. */
  networkLock?: { netns?: string };
  /** A container: its runtime's record, which goes once the copy runs at the destination (the original killed). */
  container?: { spec: ContainerSpec; netns?: string };
  at: number;
}

const SESSION_ID = /^[0-9a-f]{24}$/;

/** Where records live: /run/phaul-fast/sessions (tmpfs: a reboot ends every workload they could name). */
export function recordDir(): string {
  return runPath('sessions');
}

function fileOf(session: string, dir: string): string {
  return path.join(dir, `${session}.json`);
}

/** The tree rooted at `root` as it is now, each process with its start time. */
export function snapshotTree(root: number): OriginalProcess[] {
  const out: OriginalProcess[] = [];
  for (const pid of treePids(root)) {
    const t = startTime(pid);
    if (t !== undefined) out.push({ pid, startTime: t });
  }
  return out;
}

export function writeSourceRecord(rec: Omit<SourceRecord, 'at' | 'agentPid'>, dir = recordDir()): void {
  if (!SESSION_ID.test(rec.session)) return;
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const file = fileOf(rec.session, dir);
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify({ ...rec, agentPid: process.pid, at: Date.now() }), { mode: 0o600 });
  fs.renameSync(tmp, file);
}

export function readSourceRecord(session: string, dir = recordDir()): SourceRecord | undefined {
  if (!SESSION_ID.test(session)) return undefined;
  try {
    const r = JSON.parse(fs.readFileSync(fileOf(session, dir), 'utf8')) as SourceRecord;
    if (r.session !== session || !Array.isArray(r.original) || typeof r.to?.host !== 'string') return undefined;
    return r;
  } catch {
    return undefined;
  }
}

export function removeSourceRecord(session: string, dir = recordDir()): void {
  if (SESSION_ID.test(session)) fs.rmSync(fileOf(session, dir), { force: true });
}

/** Every record on this host whose `migrate` is gone (the sessions resolve can finish), oldest first. */
export function orphanedRecords(dir = recordDir()): SourceRecord[] {
  let names: string[] = [];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return [];
  }
  const out: SourceRecord[] = [];
  for (const n of names) {
    const m = /^([0-9a-f]{24})\.json$/.exec(n);
    const r = m ? readSourceRecord(m[1], dir) : undefined;
    if (r && !agentAlive(r)) out.push(r);
  }
  return out.sort((a, b) => a.at - b.at);
}

/**
 * Removes the records of dead migrates that leave nothing to resolve: the
 * original is not stopped (CRIU resumed it, or it is gone). Only a stopped
 * original needs a decision; a copy the destination still holds stopped is
 * discarded there when nobody decides. Called by migrate at start and by
 * resolve --list; returns how many went.
 */
export function pruneSettledRecords(dir = recordDir()): number {
  let n = 0;
  for (const r of orphanedRecords(dir)) {
    const live = liveOriginals(r);
    if (live.includes(r.root) && procState(r.root) === 'T') continue;
    removeSourceRecord(r.session, dir);
    n++;
  }
  return n;
}

/** Is the `migrate` that wrote rec still running (same pid, a node process)? */
export function agentAlive(rec: SourceRecord): boolean {
  if (rec.agentPid === process.pid || !isAlive(rec.agentPid)) return false;
  try {
    return /node|phaul/.test(fs.readFileSync(`/proc/${rec.agentPid}/comm`, 'utf8'));
  } catch {
    return false;
  }
}

/** The recorded processes that are still those processes (pid and start time match). */
export function liveOriginals(rec: SourceRecord): number[] {
  return rec.original.filter((p) => isAlive(p.pid) && startTime(p.pid) === p.startTime).map((p) => p.pid);
}
