// A test-only hook that stops an agent at a named point of a migration, so
// that a fault (a SIGKILL, a partition, a full store) lands in one phase and
// not another: the fault matrix (test/fault-matrix.test.ts, docs/FAULTS.md).
//
//   PHAUL_FAST_TEST_PAUSE=SIDE:POINT[:RELEASE_FILE]
//
// SIDE is `source` (migrate) or `destination` (serve); POINT a state of that
// side (source-states.ts, destination-states.ts) or a phase name (migrate's
// `phase` events). On reaching it the agent writes one line to stderr
// ("test pause: SIDE at POINT") and blocks its whole event loop, as a hung
// agent would, until RELEASE_FILE exists (polled every 20 ms), or forever
// without one (the test then kills it). It pauses once per process.
//
// Unset (production), this costs one environment lookup per state change and
// does nothing.
import * as fs from 'node:fs';

const SPEC = /^(source|destination):([a-z-]+)(?::(.+))?$/;

let used = false;

/** Blocks here if PHAUL_FAST_TEST_PAUSE names this side and point. */
export function testPause(side: 'source' | 'destination', point: string): void {
  const spec = process.env.PHAUL_FAST_TEST_PAUSE;
  if (!spec || used) return;
  const m = SPEC.exec(spec);
  if (!m || m[1] !== side || m[2] !== point) return;
  used = true;
  const release = m[3];
  // fs.writeSync: the line must be out before the loop blocks (a pipe's stream write may wait for the loop).
  fs.writeSync(2, `test pause: ${side} at ${point}\n`);
  const cell = new Int32Array(new SharedArrayBuffer(4));
  for (;;) {
    if (release && fs.existsSync(release)) break;
    Atomics.wait(cell, 0, 0, 20);
  }
  fs.writeSync(2, `test pause: ${side} released at ${point}\n`);
}
