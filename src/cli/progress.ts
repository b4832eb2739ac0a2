// Live pre-copy progress for `phaul-fast migrate`. On a terminal one line,
// rewritten in place (\r) each round, then a summary; piped to a file or a CI
// log, one plain line per round, since \r rewrites become noise there.
// MB/s are 10^6 bytes/s (link speeds); pending memory is in MiB (memory sizes).

import type { RoundEvent } from '../agent/precopy';

/** What the orchestrator emits per round (defined with it, in src/agent/precopy.ts). */
export type { RoundEvent };

export interface ProgressSummary {
  /** The pause actually measured, when known. */
  downtimeMs?: number;
  /** Appended as is (e.g. the policy's reason for switching over). */
  message?: string;
}

/** The subset of a stream the display needs (process.stderr, or a fake in tests). */
export interface ProgressStream {
  write(s: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

// Fixed widths so the columns stay put while the line is rewritten; a value
// too big for its field widens it rather than being cut.
const num = (v: number, digits: number, width: number) => (Number.isFinite(v) ? v.toFixed(digits) : v > 0 ? 'inf' : '-').padStart(width);
const mbps = (bps: number) => num(bps / 1e6, 1, 5);
const mib = (bytes: number) => num(bytes / 1048576, 1, 6);

/**
 * One round as one line of fixed columns (a wider value widens its column):
 * "round   3  dirty  20.0 MB/s  bw 117.2 MB/s  pending    4.2 MiB  downtime   135 ms  throttle  0%  continue"
 */
export function formatRound(e: RoundEvent): string {
  return `round ${String(e.round).padStart(3)}  dirty ${mbps(e.dirtyRateBps)} MB/s  bw ${mbps(e.bandwidthBps)} MB/s  ` +
    `pending ${mib(e.pendingBytes)} MiB  downtime ${num(e.expectedDowntimeMs, 0, 5)} ms  throttle ${num(e.throttlePct, 0, 2)}%  ${e.action}`;
}

/** The closing line: totals over the rounds shown, and how it ended. */
export function formatSummary(rounds: readonly RoundEvent[], s: ProgressSummary = {}): string {
  const bytes = rounds.reduce((a, e) => a + e.bytes, 0);
  const ms = rounds.reduce((a, e) => a + e.ms, 0);
  const last = rounds[rounds.length - 1];
  const parts = [`precopy: ${rounds.length} round${rounds.length === 1 ? '' : 's'}, ${(bytes / 1048576).toFixed(1)} MiB in ${(ms / 1000).toFixed(1)} s` +
    (ms > 0 ? ` (${(bytes / ms / 1000).toFixed(1)} MB/s)` : '')];
  if (last) {
    if (last.throttlePct > 0) parts.push(`throttle ${last.throttlePct}%`);
    parts.push(`${last.action}, expected downtime ${num(last.expectedDowntimeMs, 0, 0)} ms`);
  }
  if (s.downtimeMs !== undefined) parts.push(`downtime ${Math.round(s.downtimeMs)} ms`);
  if (s.message) parts.push(s.message);
  return parts.join(', ');
}

export class ProgressDisplay {
  private readonly rounds: RoundEvent[] = [];
  private live: string | null = null; // the line shown in place (TTY only)
  private readonly tty: boolean;

  constructor(private readonly stream: ProgressStream = process.stderr) {
    this.tty = !!stream.isTTY;
  }

  round(e: RoundEvent): void {
    this.rounds.push(e);
    const line = formatRound(e);
    if (!this.tty) {
      this.stream.write(line + '\n');
      return;
    }
    this.live = line;
    // \x1b[K clears what a longer previous line left to the right.
    this.stream.write('\r' + this.fit(line) + '\x1b[K');
  }

  /** A message that must not be mixed into the live line: printed above it. */
  note(text: string): void {
    if (this.live === null) {
      this.stream.write(text + '\n');
      return;
    }
    this.stream.write('\r\x1b[K' + text + '\n' + this.fit(this.live) + '\x1b[K');
  }

  /** Ends the display with a summary; prints nothing if no round was shown (e.g. stop-copy). Idempotent. */
  end(summary: ProgressSummary = {}): void {
    if (this.rounds.length === 0) return;
    // The last round stays on screen, above the summary.
    if (this.live !== null) this.stream.write('\n');
    this.stream.write(formatSummary(this.rounds, summary) + '\n');
    this.live = null;
    this.rounds.length = 0;
  }

  // A line wider than the terminal wraps, and \r would then rewrite only its
  // last row: cut it to the width instead.
  private fit(line: string): string {
    const cols = this.stream.columns;
    return cols && cols > 1 && line.length >= cols ? line.slice(0, cols - 1) : line;
  }
}
