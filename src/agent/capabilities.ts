// What each side tells the other at handshake, and the rules for whether two
// sides can migrate to each other. Checked before anything is touched.
import * as os from 'node:os';
import { criuBinary, criuVersion, ensureKerndatCache } from '../criu';
import { DirtyTracker } from '../memory/dirty-tracker';
import type { Capabilities } from '../protocol/messages';
import { VERSION } from '../version';

export type { Capabilities };

let cached: Promise<Capabilities> | undefined;

export function localCapabilities(): Promise<Capabilities> {
  // Once per agent, before any migration: CRIU's kernel probe cached (else every CRIU run probes again).
  if (!cached) {
    try { ensureKerndatCache(criuBinary()); } catch { /* no CRIU at all: criuVersion says so below */ }
  }
  cached ??= criuVersion().then(({ major, minor, sublevel }) => ({
    phaulVersion: VERSION,
    criu: { major, minor, sublevel },
    kernel: os.release(),
    arch: process.arch,
    // Pre-copy needs our dirty tracker (uffd-wp async + PAGEMAP_SCAN), probed for
    // real; hybrid adds CRIU's lazy restore, which needs only userfaultfd, which
    // a working tracker proves.
    modes: DirtyTracker.support().ok ? ['stop-copy', 'precopy', 'hybrid'] : ['stop-copy'],
  }));
  return cached;
}

/** CRIU 4.2 changed the page-server header and pagemap images: the two sides
 *  of a migration must be on the same side of that line. */
export function criuFamily(v: { major: number; minor: number }): 'pre-4.2' | '4.2+' {
  return v.major > 4 || (v.major === 4 && v.minor >= 2) ? '4.2+' : 'pre-4.2';
}

/** Page-server header size spoken by the dumping CRIU. */
export function pageServerHeaderSize(v: { major: number; minor: number }): 24 | 32 {
  return criuFamily(v) === '4.2+' ? 32 : 24;
}

/** What mode 'auto' tries, best first (design.md section 6: hybrid where the kernel allows). */
export const AUTO_ORDER = ['hybrid', 'precopy', 'stop-copy'] as const;

/** Mode 'auto': the first of AUTO_ORDER that both the source `a` and the destination `b` offer. */
export function autoMode(a: Capabilities, b: Capabilities): (typeof AUTO_ORDER)[number] {
  return AUTO_ORDER.find((m) => a.modes.includes(m) && b.modes.includes(m)) ?? 'stop-copy';
}

/** Why `a` (source) cannot migrate to `b` (destination) in `mode`, or undefined if it can. */
export function incompatibility(a: Capabilities, b: Capabilities, mode: string): string | undefined {
  if (a.arch !== b.arch) return `architectures differ (source ${a.arch}, destination ${b.arch})`;
  if (criuFamily(a.criu) !== criuFamily(b.criu)) {
    const fmt = (v: Capabilities['criu']) => `${v.major}.${v.minor}.${v.sublevel}`;
    return `CRIU ${fmt(a.criu)} and ${fmt(b.criu)} cannot exchange pages or images (4.2 changed both)`;
  }
  if (!a.modes.includes(mode)) return `mode ${mode} is not available on the source`;
  if (!b.modes.includes(mode)) return `mode ${mode} is not available on the destination`;
  return undefined;
}
