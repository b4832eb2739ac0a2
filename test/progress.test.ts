// CLI progress display: the line format (fixed columns, units) and the TTY
// (rewritten in place) versus pipe (one line per round) behavior, on fake streams.
//
// Run alone:  node --test dist/test/progress.test.js
import * as assert from 'node:assert/strict';
import { test } from 'node:test';

import { formatRound, formatSummary, ProgressDisplay, type RoundEvent } from '../src/cli/progress';

const ev = (o: Partial<RoundEvent> = {}): RoundEvent => ({
  round: 3, pages: 1000, bytes: 4_112_000, ms: 40, dirtyRateBps: 20e6, bandwidthBps: 117.2e6,
  pendingBytes: 4.2 * 1048576, expectedDowntimeMs: 135.4, throttlePct: 0, action: 'continue', ...o,
});

class FakeStream {
  out = '';
  constructor(readonly isTTY: boolean, readonly columns?: number) {}
  write(s: string): boolean { this.out += s; return true; }
}

test('formatRound: fixed columns and units', () => {
  assert.equal(formatRound(ev()),
    'round   3  dirty  20.0 MB/s  bw 117.2 MB/s  pending    4.2 MiB  downtime   135 ms  throttle  0%  continue');
  // MB/s are 10^6 bytes/s, pending is in MiB (2^20).
  assert.match(formatRound(ev({ dirtyRateBps: 1_500_000 })), /dirty   1\.5 MB\/s/);
  assert.match(formatRound(ev({ pendingBytes: 1_048_576 })), /pending    1\.0 MiB/);
  assert.match(formatRound(ev({ expectedDowntimeMs: 299.5, throttlePct: 40, action: 'throttle' })), /downtime   300 ms  throttle 40%  throttle$/);
  // Columns do not move while values change within their widths.
  const a = formatRound(ev());
  const b = formatRound(ev({ round: 12, dirtyRateBps: 999.9e6, bandwidthBps: 1e5, pendingBytes: 9999 * 1048576, expectedDowntimeMs: 99999, throttlePct: 99 }));
  const cols = (s: string) => [...s.matchAll(/MB\/s|MiB| ms|%/g)].map((m) => m.index);
  assert.deepEqual(cols(a), cols(b));
  // Too big for a column: widens, never cut.
  assert.match(formatRound(ev({ bandwidthBps: 12_345e6, round: 1234 })), /^round 1234 .* bw 12345\.0 MB\/s/);
  // Nothing measured yet.
  assert.match(formatRound(ev({ expectedDowntimeMs: Infinity })), /downtime   inf ms/);
  assert.match(formatRound(ev({ dirtyRateBps: NaN })), /dirty     - MB\/s/);
});

test('formatSummary: totals, average speed, how it ended', () => {
  const rounds = [ev({ round: 0, bytes: 100 * 1048576, ms: 900 }), ev({ round: 1, bytes: 4 * 1048576, ms: 100, action: 'switchover', throttlePct: 30, expectedDowntimeMs: 180 })];
  assert.equal(formatSummary(rounds, { downtimeMs: 192.4, message: 'expected downtime 180 ms <= limit 300 ms' }),
    'precopy: 2 rounds, 104.0 MiB in 1.0 s (109.1 MB/s), throttle 30%, switchover, expected downtime 180 ms, downtime 192 ms, expected downtime 180 ms <= limit 300 ms');
  assert.equal(formatSummary([ev({ bytes: 0, ms: 0 })]), 'precopy: 1 round, 0.0 MiB in 0.0 s, continue, expected downtime 135 ms');
});

test('on a TTY: one line rewritten in place, then the summary below it', () => {
  const s = new FakeStream(true);
  const d = new ProgressDisplay(s);
  d.round(ev({ round: 0 }));
  d.round(ev({ round: 1 }));
  assert.equal(s.out, `\r${formatRound(ev({ round: 0 }))}\x1b[K\r${formatRound(ev({ round: 1 }))}\x1b[K`);
  assert.ok(!s.out.includes('\n'));
  s.out = '';
  d.note('switchover after round 1');
  // Printed above the live line, which is drawn again.
  assert.equal(s.out, `\r\x1b[Kswitchover after round 1\n${formatRound(ev({ round: 1 }))}\x1b[K`);
  s.out = '';
  d.end({ downtimeMs: 150 });
  assert.equal(s.out, `\n${formatSummary([ev({ round: 0 }), ev({ round: 1 })], { downtimeMs: 150 })}\n`);
  s.out = '';
  d.end();
  assert.equal(s.out, '', 'end() twice prints once');
});

test('on a TTY narrower than the line: cut to the width, so \\r never meets a wrapped line', () => {
  const s = new FakeStream(true, 60);
  new ProgressDisplay(s).round(ev());
  assert.equal(s.out, `\r${formatRound(ev()).slice(0, 59)}\x1b[K`);
});

test('not a TTY: one plain line per round, no control characters', () => {
  const s = new FakeStream(false, 60);
  const d = new ProgressDisplay(s);
  d.round(ev({ round: 0 }));
  d.note('a log line');
  d.round(ev({ round: 1, action: 'switchover' }));
  d.end();
  const lines = s.out.split('\n');
  assert.deepEqual(lines, [formatRound(ev({ round: 0 })), 'a log line', formatRound(ev({ round: 1, action: 'switchover' })),
    formatSummary([ev({ round: 0 }), ev({ round: 1, action: 'switchover' })]), '']);
  // biome-ignore lint/suspicious/noControlCharactersInRegex: the test looks for terminal control bytes
  assert.ok(!/[\r\x1b]/.test(s.out));
});

test('no rounds (stop-copy): end() prints nothing', () => {
  for (const tty of [true, false]) {
    const s = new FakeStream(tty);
    new ProgressDisplay(s).end({ downtimeMs: 10 });
    assert.equal(s.out, '');
  }
});
