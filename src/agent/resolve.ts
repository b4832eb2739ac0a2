// `phaul-fast resolve SESSION`: ends a session left "in doubt" with exactly
// one running copy of the workload, or says exactly why it cannot.
//
// A session is in doubt when the source's `migrate` died or lost its
// destination after CRIU let go of the tree (the original is stopped at the
// source and nobody will resume it) or after it sent `commit` (it cannot know
// whether the destination resumed its copy). The source's record
// (source-record.ts) names the destination and the original processes; the
// destination knows what became of its copy (a live session, or its outcome
// record, outcomes.ts). The destination's answer decides:
//   running            -> the copy is the workload: the original is killed;
//   stopped            -> the copy waits for a decision: commit it (the
//                         original is stopped or gone), or abort it (the
//                         original runs again: it must not run twice);
//   aborted, unknown   -> no copy runs there: the original is resumed;
//   unfilled           -> the copy ran but its memory never all arrived
//                         (unfilled.ts): it is killed and the original,
//                         stopped with the memory it lacks, resumed;
//   in-progress        -> the destination has not restored it yet (or,
//                         postcopy, still fills its memory): try again.
// The destination is asked, never guessed: if it cannot be reached, nothing
// is touched and the original stays stopped.
import { asPhaulError, PhaulError } from '../errors';
import { releaseCriuNetworkLock } from '../criu/network-unlock';
import { forgetMovedContainer } from '../container/source';
import type { FrameConn } from '../protocol/frames';
import { authenticateClient } from '../protocol/auth';
import type { Resolution, Resolve } from '../protocol/messages';
import type { ClientTls } from '../protocol/secure-channel';
import { connectDestination } from './connect';
import { procState, signalAll, waitGone } from './process-tree';
import { agentAlive, liveOriginals, readSourceRecord, removeSourceRecord, type SourceRecord } from './source-record';

export interface ResolveOptions {
  session: string;
  token: Buffer;
  /** The destination; default: the one in the source's record. */
  to?: { host: string; port: number };
  tls?: ClientTls;
  /** Where source records are (tests). */
  recordDir?: string;
  connectTimeoutMs?: number;
}

export interface ResolveReport {
  ok: true;
  session: string;
  /** moved: the copy runs at the destination, the original is gone; rolled-back: the original runs here. */
  outcome: 'moved' | 'rolled-back';
  /** What the destination said before we acted. */
  destination: Resolution['state'];
  /** Where the workload runs now: the destination's pid (moved) or the original's root (rolled-back). */
  pid?: number;
  detail: string;
}

/** Asks the destination about `session` over a `resolve` connection; `decide` settles a stopped copy. */
export async function askDestination(to: { host: string; port: number }, token: Buffer, tls: ClientTls | undefined, session: string,
  decide: Resolve['decide'], timeoutMs = 10_000): Promise<Resolution> {
  let conn: FrameConn | undefined;
  try {
    conn = await connectDestination(to, token, tls, timeoutMs);
    await authenticateClient(conn, token, 'resolve', session);
    conn.send({ t: 'resolve', decide });
    // A commit includes the SIGCONT; an abort the kill of the copy (up to 5 s).
    return await conn.expect('resolution', timeoutMs + 10_000);
  } finally {
    conn?.close();
  }
}

type OriginalState = 'stopped' | 'running' | 'gone' | 'unrecorded';

function originalState(rec: SourceRecord | undefined): { state: OriginalState; pids: number[] } {
  if (!rec) return { state: 'unrecorded', pids: [] };
  const pids = liveOriginals(rec);
  const root = rec.original.find((p) => p.pid === rec.root);
  if (!root || !pids.includes(rec.root)) return { state: pids.length ? 'running' : 'gone', pids };
  return { state: procState(rec.root) === 'T' ? 'stopped' : 'running', pids };
}

/** How long resolve waits for a destination that is still restoring the session. */
const IN_PROGRESS_WAIT_MS = 30_000;

export async function resolveSession(o: ResolveOptions): Promise<ResolveReport> {
  const { session } = o;
  if (!/^[0-9a-f]{24}$/.test(session)) throw new PhaulError('usage', `'${session.slice(0, 40)}' is not a session id (24 hex digits, as migrate printed it)`);
  const rec = readSourceRecord(session, o.recordDir);
  if (rec && agentAlive(rec))
    throw new PhaulError('usage', `session ${session} is still being migrated by pid ${rec.agentPid}: it settles the session itself`);
  const to = o.to ?? rec?.to;
  if (!to) throw new PhaulError('usage', `no record of session ${session} on this host: give the destination with --to HOST:PORT`);
  const tls = o.tls ?? (rec?.tls === 'psk' ? { psk: true as const } : undefined);
  const where = `${to.host}:${to.port}`;
  const ask = async (decide: Resolve['decide']) => {
    try {
      return await askDestination(to, o.token, tls, session, decide, o.connectTimeoutMs);
    } catch (e) {
      const err = e instanceof PhaulError ? e : new PhaulError('network', String(e));
      const kept = rec ? `; nothing was changed (the original, pid ${rec.root}, is ${originalState(rec).state}): run resolve again once it answers` : '';
      throw new PhaulError(err.code, `cannot ask the destination ${where} about session ${session}: ${err.message}${kept}`);
    }
  };
  const orig = originalState(rec);
  let q = await ask('query');
  // Still being restored there. If our original runs again (CRIU resumed it), the copy must never
  // run: abort it now (the destination kills it as soon as it exists). Otherwise wait for the restore.
  for (const end = Date.now() + IN_PROGRESS_WAIT_MS; q.state === 'in-progress'; ) {
    if (orig.state === 'running') {
      const r = await ask('abort');
      if (r.state === 'aborted') {
        removeSourceRecord(session, o.recordDir);
        return { ok: true, session, outcome: 'rolled-back', destination: 'in-progress', pid: rec!.root,
          detail: `the original runs at the source (pid ${rec!.root}); the destination discarded the copy it was restoring` };
      }
      q = r;
      break;
    }
    if (Date.now() > end) break;
    await new Promise((r) => setTimeout(r, 1000));
    q = await ask('query');
  }
  const done = (outcome: ResolveReport['outcome'], detail: string, pid?: number): ResolveReport => {
    removeSourceRecord(session, o.recordDir);
    return { ok: true, session, outcome, destination: q.state, ...(pid ? { pid } : {}), detail: detail + lockNote + runtimeNote };
  };
  // A container's original, once killed, is forgotten by its runtime too (as at the end of a migration).
  const killOriginal = async () => {
    signalAll(orig.pids, 'SIGKILL');
    if (rec) await waitGone(rec.root, 5000);
    if (rec?.container) {
      const w = await forgetMovedContainer(rec.container.spec, rec.container.netns).catch((e) => asPhaulError(e).message);
      runtimeNote = w ? `; ${w}` : `; the source's ${rec.container.spec.runtime ?? 'runc'} forgot container ${rec.container.spec.id}`;
    }
  };
  let runtimeNote = '';
  let lockNote = '';
  // CRIU's network lock outlives a dump that succeeded: lifted first, or the resumed tree's connections hang.
  const resumeOriginal = async () => {
    if (rec?.networkLock && orig.pids.length) {
      const pids = [rec.root, ...orig.pids.filter((p) => p !== rec.root)].filter((p) => orig.pids.includes(p));
      lockNote = `; network lock: ${await releaseCriuNetworkLock(pids, rec.networkLock.netns).catch((e) => asPhaulError(e).message)}`;
    }
    signalAll(orig.pids, 'SIGCONT');
  };

  switch (q.state) {
    case 'running':
      await killOriginal();
      return done('moved', `the copy runs at ${where} as pid ${q.pid}; the original ${orig.pids.length ? 'was killed' : 'was already gone'}`, q.pid);
    case 'stopped': {
      if (orig.state === 'unrecorded')
        throw new PhaulError('lost', `${where} holds session ${session}'s copy stopped (pid ${q.pid}), but this host has no record of ` +
          'its original: run phaul-fast resolve on the source host');
      // The original ran again (CRIU resumed it when the dump failed): the copy must never run.
      const decide = orig.state === 'running' ? 'abort' : 'commit';
      const r = await ask(decide);
      if (decide === 'commit' && r.state === 'running') {
        await killOriginal();
        return done('moved', `the destination's stopped copy was resumed (pid ${r.pid}); the original was ${orig.pids.length ? 'killed' : 'already gone'}`, r.pid);
      }
      if (decide === 'abort' && (r.state === 'aborted' || r.state === 'unknown'))
        return done('rolled-back', `the original runs at the source (pid ${rec!.root}); the destination's stopped copy was killed`, rec!.root);
      throw new PhaulError('lost', `asked ${where} to ${decide} session ${session} and it answered '${r.state}' (${r.detail}): run resolve again`);
    }
    case 'aborted':
    case 'unknown': {
      if (orig.state === 'stopped' || orig.state === 'running') {
        await resumeOriginal();
        return done('rolled-back', `no copy of session ${session} runs at ${where} (${q.detail}); the original runs at the source (pid ${rec!.root})`, rec!.root);
      }
      if (orig.state === 'unrecorded')
        throw new PhaulError('lost', `no copy of session ${session} runs at ${where} (${q.detail}), and this host has no record of its original: ` +
          'run phaul-fast resolve on the source host');
      throw new PhaulError('lost', `no copy of session ${session} runs at ${where} (${q.detail}) and its original (pid ${rec!.root}) is gone: the workload is lost`);
    }
    case 'unfilled': {
      // The copy ran but lacks memory only the original has: the original is the workload, as of the freeze.
      if (orig.state === 'unrecorded')
        throw new PhaulError('lost', `${where} holds session ${session}'s copy stopped for lack of its memory (pid ${q.pid}), but this ` +
          'host has no record of its original: run phaul-fast resolve on the source host');
      if (orig.state === 'gone')
        throw new PhaulError('lost', `${where} holds session ${session}'s copy stopped for lack of its memory (pid ${q.pid}) and the ` +
          `original (pid ${rec!.root}) is gone: the workload is lost; nothing was changed`);
      const r = await ask('abort');
      if (r.state !== 'aborted')
        throw new PhaulError('lost', `asked ${where} to discard session ${session}'s unfilled copy and it answered '${r.state}' (${r.detail}): run resolve again`);
      await resumeOriginal();
      return done('rolled-back', `the destination's copy (pid ${q.pid}) ran but its memory never all arrived, so it was killed; the ` +
        `original runs at the source again (pid ${rec!.root}) with its memory as of the freeze: what the copy did since the switchover is lost`, rec!.root);
    }
    case 'in-progress':
      throw new PhaulError('lost', `${where} is still restoring session ${session} (${q.detail}) after ${IN_PROGRESS_WAIT_MS / 1000} s; ` +
        'nothing was changed: run resolve again');
  }
}
