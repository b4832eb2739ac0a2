// The destination session's states, the edges between them, the messages it
// accepts from the source in each, and what a failure in each state does:
// docs/PROTOCOL.md's failure table, destination column, as code.
// src/agent/destination.ts moves through these with one StateMachine.
import type { MessageType } from '../protocol/messages';
import type { TransitionTable } from './state-machine';

export type DestinationState =
  /** Authenticated; capabilities and `prepare` expected. */
  | 'handshake'
  /** Pages and images arrive (stop-copy: the page server and images until `restore`;
   *  pre-copy modes: rounds into the page store, images, then `switchover`). */
  | 'receiving'
  /** CRIU restores the tree, stopped (hybrid: lazily, memory to come). */
  | 'restoring'
  /** The copy exists, stopped, and has never run; `commit` or `abort` decides. */
  | 'restored-stopped'
  /** `commit` received: the copy runs and is the workload. */
  | 'running'
  /** Hybrid: the copy runs while the lazy-pages server fills its memory. */
  | 'filling'
  /** Terminal: the workload runs here (filled, for hybrid). */
  | 'done'
  /** Terminal: failed before the copy ran; it is killed and the session's files removed. */
  | 'aborted';

export const DESTINATION_INITIAL: DestinationState = 'handshake';

export const DESTINATION_TRANSITIONS: TransitionTable<DestinationState> = {
  handshake: ['receiving', 'aborted'],
  receiving: ['restoring', 'aborted'],
  restoring: ['restored-stopped', 'aborted'],
  'restored-stopped': ['running', 'aborted'],
  // After `running` nothing rolls back: a failure is logged, the copy stays.
  running: ['filling', 'done'],
  filling: ['done'],
  done: [],
  aborted: [],
};

/** What the source may send in each state ('error' is always accepted and ends the session). */
export const DESTINATION_ACCEPTS: Readonly<Record<DestinationState, readonly MessageType[]>> = {
  handshake: ['caps', 'prepare', 'abort'],
  receiving: ['layout', 'round', 'image', 'images-done', 'restore', 'switchover', 'postcopy', 'abort', 'tree-entries', 'tree-data'],
  restoring: ['abort'],
  'restored-stopped': ['commit', 'abort'],
  // The source only closes from here on; whatever it sends is ignored.
  running: [],
  filling: [],
  done: [],
  aborted: [],
};

/** What the destination does when a state fails. */
export type DestinationRecovery =
  /** Nothing restored yet: remove the session's images and page store. */
  | 'discard'
  /** A stopped copy may exist and never ran: kill it (and a lazy-pages server), then discard. */
  | 'kill-copy'
  /** The copy runs and is the workload: keep it (a failed fill stops it, see destination.ts). */
  | 'keep';

type Live = Exclude<DestinationState, 'done' | 'aborted'>;

/** docs/PROTOCOL.md's failure table, destination column. */
export const DESTINATION_FAILURE: Readonly<Record<Live, DestinationRecovery>> = {
  handshake: 'discard',
  receiving: 'discard',
  restoring: 'kill-copy',
  'restored-stopped': 'kill-copy',
  running: 'keep',
  filling: 'keep',
};

/** Has the copy run (so that it is the workload and nothing may roll it back)? */
export function copyRan(s: DestinationState): boolean {
  return s === 'running' || s === 'filling' || s === 'done';
}
