// The source's and the destination's state tables, without a peer: every
// state is reachable, every live state can end, the failure tables cover
// every live state and say what docs/PROTOCOL.md says, and the one transition
// function refuses an edge the table lacks.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { reachable, StateMachine, type StateChange, type TransitionTable } from '../src/agent/state-machine';
import { SOURCE_FAILURE, SOURCE_INITIAL, SOURCE_TRANSITIONS, type SourceState } from '../src/agent/source-states';
import {
  copyRan, DESTINATION_ACCEPTS, DESTINATION_FAILURE, DESTINATION_INITIAL, DESTINATION_TRANSITIONS, type DestinationState,
} from '../src/agent/destination-states';
import { PhaulError } from '../src/errors';

function checkTable<S extends string>(table: TransitionTable<S>, initial: S, failure: Partial<Record<S, unknown>>): void {
  const states = Object.keys(table) as S[];
  assert.deepEqual([...reachable(table, initial)].sort(), [...states].sort(), 'every state is reachable from the initial one');
  for (const s of states) for (const n of table[s]) assert.ok(states.includes(n), `${s} -> ${n}: ${n} is a state`);
  const terminal = states.filter((s) => table[s].length === 0);
  for (const s of states) {
    const ends = [...reachable(table, s)].some((r) => terminal.includes(r));
    assert.ok(ends, `${s} can reach a terminal state`);
    assert.equal(Object.hasOwn(failure, s), !terminal.includes(s), `${s}: a failure row exactly when it is live`);
  }
}

test('source: tables are complete and consistent', () => {
  checkTable(SOURCE_TRANSITIONS, SOURCE_INITIAL, SOURCE_FAILURE);
});

test("source: the failure table is PROTOCOL.md's", () => {
  // Before CRIU has the tree, nothing was stopped.
  for (const s of ['connecting', 'negotiating', 'preparing', 'copying'] as const) assert.equal(SOURCE_FAILURE[s], 'nothing', s);
  // CRIU holds the tree until we answer its hook or commit its lazy dump: it resumes it.
  assert.equal(SOURCE_FAILURE.dumping, 'criu-resumes');
  assert.equal(SOURCE_FAILURE.restored, 'criu-resumes');
  // Connection lost before `commit` is sent: SIGCONT to the original.
  assert.equal(SOURCE_FAILURE.held, 'resume');
  // After `commit`, before `running`: cannot know; left stopped, and only then is the outcome 'lost'
  // (rolled-back, or failed if the original died meanwhile, only once the destination, asked again,
  // says its copy never ran: migrate.ts awaitRunning).
  assert.equal(SOURCE_FAILURE.committing, 'leave-stopped');
  assert.deepEqual(SOURCE_TRANSITIONS.committing, ['committed', 'lost', 'rolled-back', 'failed']);
  const toLost = (Object.keys(SOURCE_TRANSITIONS) as SourceState[]).filter((s) => SOURCE_TRANSITIONS[s].includes('lost'));
  // Postcopy's fill is the other: its memory could not all arrive, so both copies are left stopped.
  assert.deepEqual(toLost, ['committing', 'filling']);
  // After `running`: the copy is the workload; no state after it may roll back.
  assert.equal(SOURCE_FAILURE.committed, 'none');
  assert.equal(SOURCE_FAILURE.filling, 'none');
  for (const s of reachable(SOURCE_TRANSITIONS, 'committed')) assert.notEqual(s, 'rolled-back', `${s} after running`);
});

test("destination: tables are complete, and the copy is killed only if it never ran", () => {
  checkTable(DESTINATION_TRANSITIONS, DESTINATION_INITIAL, DESTINATION_FAILURE);
  assert.equal(DESTINATION_FAILURE.handshake, 'discard');
  assert.equal(DESTINATION_FAILURE.receiving, 'discard');
  assert.equal(DESTINATION_FAILURE.restoring, 'kill-copy');
  assert.equal(DESTINATION_FAILURE['restored-stopped'], 'kill-copy');
  assert.equal(DESTINATION_FAILURE.running, 'keep');
  assert.equal(DESTINATION_FAILURE.filling, 'keep');
  for (const s of Object.keys(DESTINATION_TRANSITIONS) as DestinationState[]) {
    // Once the copy ran, 'aborted' (which kills it) is out of reach.
    if (copyRan(s)) assert.ok(!reachable(DESTINATION_TRANSITIONS, s).has('aborted'), s);
  }
  // Only `commit` (or `abort`) moves a stopped copy on; nothing but the source's
  // close is expected once it runs.
  assert.deepEqual([...DESTINATION_ACCEPTS['restored-stopped']].sort(), ['abort', 'commit']);
  assert.deepEqual(DESTINATION_ACCEPTS.running, []);
  assert.ok(!DESTINATION_ACCEPTS.receiving.includes('commit'), 'no commit before a restore');
});

test('the transition function refuses an edge the table lacks and reports every change', () => {
  const seen: StateChange<SourceState>[] = [];
  const sm = new StateMachine<SourceState>('source', SOURCE_TRANSITIONS, SOURCE_INITIAL, (c) => seen.push(c));
  sm.to('negotiating');
  assert.throws(() => sm.to('committing'), (e: unknown) => e instanceof PhaulError && /no transition from negotiating to committing/.test(e.message));
  assert.equal(sm.state, 'negotiating', 'a refused transition changes nothing');
  sm.to('rolled-back');
  assert.equal(sm.terminal, true);
  assert.throws(() => sm.to('connecting'), /no transition from rolled-back/);
  assert.deepEqual(seen, [{ from: 'connecting', to: 'negotiating' }, { from: 'negotiating', to: 'rolled-back' }]);
});
