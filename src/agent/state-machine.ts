// One transition function per session, after QEMU's migrate_set_state: the
// state changes in one place, only along the edges of a table written out in
// full, and every change is reported. A transition the table lacks is a bug in
// the agent, not a peer's fault: it fails the session (which then rolls back
// by the failure table of its side) instead of going on in a state nobody
// designed for.
import { PhaulError } from '../errors';

export interface StateChange<S extends string> {
  from: S;
  to: S;
}

/** Every state with the states it may go to; terminal states map to []. */
export type TransitionTable<S extends string> = Readonly<Record<S, readonly S[]>>;

export class StateMachine<S extends string> {
  private current: S;

  constructor(
    /** Names the session in errors ("source", "destination session 1a2b"). */
    readonly name: string,
    readonly table: TransitionTable<S>,
    initial: S,
    private readonly onChange: (c: StateChange<S>) => void = () => undefined,
  ) {
    this.current = initial;
  }

  get state(): S {
    return this.current;
  }

  is(...states: S[]): boolean {
    return states.includes(this.current);
  }

  get terminal(): boolean {
    return this.table[this.current].length === 0;
  }

  /** Moves to `next`, or throws if the table has no such edge. */
  to(next: S): void {
    const from = this.current;
    if (!this.table[from].includes(next)) {
      throw new PhaulError('failed', `${this.name}: no transition from ${from} to ${next} (a bug in phaul-fast)`);
    }
    this.current = next;
    this.onChange({ from, to: next });
  }
}

/** States reachable from `initial` through `table` (for tests of the tables). */
export function reachable<S extends string>(table: TransitionTable<S>, initial: S): Set<S> {
  const seen = new Set<S>([initial]);
  const todo = [initial];
  for (let s = todo.pop(); s !== undefined; s = todo.pop()) {
    for (const n of table[s]) if (!seen.has(n)) { seen.add(n); todo.push(n); }
  }
  return seen;
}
