// The source session's states, the edges between them, and what a failure in
// each state does to the workload: docs/PROTOCOL.md's failure table ("Who
// decides, and what happens on failure"), as code. src/agent/migrate.ts moves
// through these states with one StateMachine and rolls back by SOURCE_FAILURE.
import type { TransitionTable } from './state-machine';

export type SourceState =
  /** Connecting and authenticating the control connection. */
  | 'connecting'
  /** Exchanging capabilities; pre-copy modes then start tracking the tree's writes. */
  | 'negotiating'
  /** `prepare` sent; opening the data connection(s). */
  | 'preparing'
  /** Pre-copy rounds: memory goes over while the workload runs. */
  | 'copying'
  /** CRIU has the tree: it freezes and dumps it (stop-copy: into the page server;
   *  pre-copy: everything but lazy memory, then our final round). */
  | 'dumping'
  /** The destination holds a stopped copy; CRIU still holds the original. */
  | 'restored'
  /** CRIU let go; the original is stopped and held by us; `commit` not sent yet. */
  | 'held'
  /** `commit` sent, `running` not received: the point of no return is behind us. */
  | 'committing'
  /** The destination's copy runs; the original is killed. */
  | 'committed'
  /** Hybrid: waiting for the destination to have filled the copy's memory. Postcopy: sending that memory
   *  meanwhile (asked-for pages first); the original is killed only once it is all in. */
  | 'filling'
  /** Terminal: migrated. */
  | 'done'
  /** Terminal: failed, and the original runs at the source as before. */
  | 'rolled-back'
  /** Terminal: failed after `commit`: whether the copy runs is unknown (or, postcopy, it was stopped for
   *  lack of its memory); the original is left stopped. */
  | 'lost'
  /** Terminal: failed, and the original does not run at the source (it died, or the copy runs). */
  | 'failed';

export const SOURCE_INITIAL: SourceState = 'connecting';

const FAILED = ['rolled-back', 'failed'] as const;

export const SOURCE_TRANSITIONS: TransitionTable<SourceState> = {
  connecting: ['negotiating', ...FAILED],
  negotiating: ['preparing', ...FAILED],
  // stop-copy goes straight to CRIU's dump; pre-copy modes copy first.
  preparing: ['copying', 'dumping', ...FAILED],
  copying: ['dumping', ...FAILED],
  dumping: ['restored', ...FAILED],
  restored: ['held', ...FAILED],
  held: ['committing', ...FAILED],
  // rolled-back: asked after a lost `running`, the destination said its copy never ran.
  committing: ['committed', 'lost', 'rolled-back', 'failed'],
  committed: ['filling', 'done', 'failed'],
  // A fill that fails is a warning in the report: the workload moved.
  filling: ['done', 'lost'],
  done: [],
  'rolled-back': [],
  lost: [],
  failed: [],
};

/** What the source does to the workload when a state fails. */
export type SourceRecovery =
  /** The original never stopped (tracking and throttling end with the session): nothing to undo. */
  | 'nothing'
  /** CRIU holds the original: its dump fails (post-dump hook answers "fail", or the lazy dump is
   *  rolled back, or our death sends it SIGALRM) and CRIU resumes it. */
  | 'criu-resumes'
  /** We hold the original stopped: SIGCONT to every process of the tree. */
  | 'resume'
  /** We cannot know whether the destination resumed its copy: leave the original stopped, exit `lost`. */
  | 'leave-stopped'
  /** The copy runs at the destination: nothing to undo (and nothing may be). */
  | 'none';

type Live = Exclude<SourceState, 'done' | 'rolled-back' | 'lost' | 'failed'>;

/** docs/PROTOCOL.md's failure table, source column. Every non-terminal state has a row. */
export const SOURCE_FAILURE: Readonly<Record<Live, SourceRecovery>> = {
  connecting: 'nothing',
  negotiating: 'nothing',
  preparing: 'nothing',
  copying: 'nothing',
  dumping: 'criu-resumes',
  restored: 'criu-resumes',
  held: 'resume',
  committing: 'leave-stopped',
  committed: 'none',
  filling: 'none',
};

export function isLive(s: SourceState): s is Live {
  return Object.hasOwn(SOURCE_FAILURE, s);
}
