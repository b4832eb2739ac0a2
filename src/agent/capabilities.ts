// The one capability model. Which migrate modes exist, what each needs of a
// host, why this host can or cannot run each, what `--mode auto` picks, and
// what each side tells the other at handshake. `check`, `migrate`, `serve`'s
// handshake and the bench all read it, so they cannot disagree: the modes
// `check --json` calls available are the modes `migrate` accepts and this
// host offers a peer. Adding a mode is one entry in MODE_NEEDS (and its
// engine in src/agent/migrate.ts).
import * as os from 'node:os';
import { LAZY_PIPE_BYTES, pipeMaxSize } from '../check/kernel';
import { criuBinary, criuVersionCached, ensureKerndatCache } from '../criu';
import { DirtyTracker } from '../memory/dirty-tracker';
import type { Capabilities } from '../protocol/messages';
import { VERSION } from '../version';
import { runPath } from './run-dir';

export type { Capabilities };

/** A fact about this host that a mode may need, with the evidence. */
export interface Fact {
  ok: boolean;
  detail: string;
}

export interface HostFacts {
  /** CRIU runs (its version answers through the path dumps and restores take). */
  criu: Fact;
  /** Our dirty-page tracker works here: userfaultfd write-protection in async mode
   *  (with unpopulated pages) and PAGEMAP_SCAN, Linux >= 6.7. */
  dirtyTracking: Fact;
  /** CRIU's lazy dump (the switchover of the pre-copy modes) can run: fs.pipe-max-size >= 4 MiB. */
  lazyDump: Fact;
  /** A lazy restore can run: userfaultfd with the non-cooperative events (fork, remap, remove, unmap). */
  lazyRestore: Fact;
}

export type Need = keyof HostFacts;

/**
 * Every migrate mode and the facts it needs, in the order `check` lists them.
 * stop-copy: freeze, dump into the destination's page server, restore.
 * precopy: copy memory while the tree runs, freeze, send the last dirty pages, restore.
 * hybrid: pre-copy, then a lazy restore: the tree resumes before its memory is
 *   back in place and is filled from the destination's own store.
 * postcopy: no rounds: freeze, CRIU's images without the memory, a lazy
 *   restore at once; the memory comes from the source while the copy runs.
 */
export const MODE_NEEDS = {
  'stop-copy': ['criu'],
  precopy: ['criu', 'dirtyTracking', 'lazyDump'],
  hybrid: ['criu', 'dirtyTracking', 'lazyDump', 'lazyRestore'],
  postcopy: ['criu', 'lazyDump', 'lazyRestore'],
} as const satisfies Record<string, readonly Need[]>;

export type Mode = keyof typeof MODE_NEEDS;
export const MODES = Object.keys(MODE_NEEDS) as readonly Mode[];

/** How each mode moves memory, for people (check, --help). */
export const MODE_HOW: Readonly<Record<Mode, string>> = {
  'stop-copy': 'CRIU dump into the destination\'s page server, then restore',
  precopy: 'copy while the workload runs (uffd-wp + PAGEMAP_SCAN), then CRIU\'s lazy dump and the last dirty pages',
  hybrid: 'pre-copy, then a lazy restore: the workload resumes before its memory is back',
  postcopy: 'CRIU\'s lazy dump, a lazy restore at once; memory follows from the source (faults first) while the copy runs',
};

/** What mode 'auto' tries, best first: the shortest pause where both hosts allow it (docs/DESIGN.md section 7). */
export const AUTO_ORDER: readonly Mode[] = ['hybrid', 'precopy', 'stop-copy'];

export function isMode(m: string): m is Mode {
  return Object.hasOwn(MODE_NEEDS, m);
}

export interface ModeVerdict {
  available: boolean;
  /** What it uses when available; what is missing when not. */
  why: string;
}

/** The mode rules: each mode is available when every fact it needs holds. */
export function judgeModes(f: HostFacts): Record<Mode, ModeVerdict> {
  const out = {} as Record<Mode, ModeVerdict>;
  for (const mode of MODES) {
    const missing = MODE_NEEDS[mode].filter((n) => !f[n].ok);
    out[mode] = missing.length
      ? { available: false, why: missing.map((n) => `${NEED_NAME[n]}: ${f[n].detail}`).join('; ') }
      : { available: true, why: MODE_HOW[mode] };
  }
  return out;
}

const NEED_NAME: Readonly<Record<Need, string>> = {
  criu: 'CRIU',
  dirtyTracking: 'dirty-page tracking',
  lazyDump: 'CRIU lazy dump',
  lazyRestore: 'lazy restore',
};

export function availableModes(f: HostFacts): Mode[] {
  const v = judgeModes(f);
  return MODES.filter((m) => v[m].available);
}

/** Mode 'auto': the first of AUTO_ORDER that both lists hold (stop-copy if none). */
export function pickAuto(ours: readonly string[], theirs: readonly string[] = ours): Mode {
  return AUTO_ORDER.find((m) => ours.includes(m) && theirs.includes(m)) ?? 'stop-copy';
}

/** Mode 'auto' between a source `a` and a destination `b`. */
export function autoMode(a: Capabilities, b: Capabilities): Mode {
  return pickAuto(a.modes, b.modes);
}

// userfaultfd API features (linux/userfaultfd.h) a lazy restore relies on: the
// tree forks, remaps, drops and unmaps memory while pages are still missing.
const UFFD_FEATURE_EVENT_FORK = 1 << 1;
const UFFD_FEATURE_EVENT_REMAP = 1 << 2;
const UFFD_FEATURE_EVENT_REMOVE = 1 << 3;
const UFFD_FEATURE_EVENT_UNMAP = 1 << 6;
const NON_COOPERATIVE = UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP;

/**
 * The kernel facts, probed for real (a few syscalls on this process, cached by
 * the addon): both `check` and the agents take them from here. `criu` comes
 * from the caller, which knows how it ran CRIU.
 */
export function probeHostFacts(criu: Fact): HostFacts {
  let tracker: { ok: boolean; features: number; reason: string };
  try {
    tracker = DirtyTracker.support();
  } catch (e) {
    // No addon: nothing it probes can be claimed (the loader's message says what to run).
    tracker = { ok: false, features: 0, reason: e instanceof Error ? e.message.split('\n')[0] : String(e) };
  }
  const pipe = pipeMaxSize();
  const lazyDumpOk = pipe !== null && pipe >= LAZY_PIPE_BYTES;
  const features = `userfaultfd features 0x${tracker.features.toString(16)}`;
  const nonCoop = tracker.features !== 0 && (tracker.features & NON_COOPERATIVE) === NON_COOPERATIVE;
  return {
    criu,
    dirtyTracking: { ok: tracker.ok, detail: tracker.ok ? `uffd-wp async + PAGEMAP_SCAN (${features})` : tracker.reason },
    lazyDump: {
      ok: lazyDumpOk,
      detail: `fs.pipe-max-size ${pipe ?? 'unreadable'}` + (lazyDumpOk ? '' : ` (needs >= ${LAZY_PIPE_BYTES}: sysctl -w fs.pipe-max-size=${LAZY_PIPE_BYTES})`),
    },
    lazyRestore: {
      ok: nonCoop,
      detail: nonCoop ? `non-cooperative userfaultfd events (${features})`
        : tracker.features === 0 ? `userfaultfd unusable: ${tracker.reason}` : `userfaultfd lacks fork/remap/remove/unmap events (${features})`,
    },
  };
}

let cached: Promise<Capabilities> | undefined;

/** This host as the handshake describes it; fails (once) if CRIU does not answer (a binary that answered once is not asked again). */
export function localCapabilities(): Promise<Capabilities> {
  // Once per agent, before any migration: CRIU's kernel probe cached (else every CRIU run probes again).
  if (!cached) {
    try { ensureKerndatCache(criuBinary()); } catch { /* no CRIU at all: criuVersion says so below */ }
  }
  // The version from the binary's own cache entry when it has one (criu/version-cache.ts): asking
  // starts CRIU, a fixed cost of every migration's source otherwise.
  cached ??= (async () => criuVersionCached(criuBinary(), () => runPath('criu-version.json')))().then(({ major, minor, sublevel }) => {
    const criu = { major, minor, sublevel };
    const facts = probeHostFacts({ ok: true, detail: `CRIU ${major}.${minor}.${sublevel}` });
    return {
      phaulVersion: VERSION,
      criu,
      kernel: os.release(),
      arch: process.arch,
      modes: availableModes(facts),
    };
  });
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
