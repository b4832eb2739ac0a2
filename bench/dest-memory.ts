// The destination's memory during a run: page data on tmpfs (the page store,
// or CRIU's images) plus the resident memory of the restored workload,
// sampled while the migration and its fill run; the peak is what the
// destination must have free. Source and destination may share the machine
// (and a namespace, on loopback), so the restored processes are told apart by
// command name from the original's pids, taken before the migration starts.
import * as fs from 'node:fs';
import * as path from 'node:path';

/** Bytes really held by the files under dir (sparse files and punched holes count what is allocated). */
function allocatedBytes(dir: string): number {
  let total = 0;
  let names: fs.Dirent[];
  try { names = fs.readdirSync(dir, { withFileTypes: true }); } catch { return 0; }
  for (const d of names) {
    const p = path.join(dir, d.name);
    if (d.isDirectory()) total += allocatedBytes(p);
    else if (d.isFile()) {
      try { total += fs.statSync(p).blocks * 512; } catch { /* removed meanwhile */ }
    }
  }
  return total;
}

function comm(pid: number): string | null {
  try { return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim(); } catch { return null; }
}

function rssBytes(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch { return 0; }
}

function pidsNow(): number[] {
  return fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n)).map(Number);
}

/** A sample whose reads took longer than this (the sampler was preempted) is taken again, at most MAX_TRIES times. */
const MAX_GAP_MS = 3;
const MAX_TRIES = 5;

export interface MemorySampler {
  /** Stops sampling; the peak in bytes. */
  stop(): number;
}

/**
 * Samples every intervalMs: page data in `dirs` (the destination's page
 * stores or images), plus the RSS of processes named like `originalPid` that
 * did not exist at the start (the restored copy) in the destination's network
 * namespace.
 */
export function sampleDestinationMemory(originalPid: number, dirs: string[], netnsPath: string | null, intervalMs = 100): MemorySampler {
  const name = comm(originalPid);
  // Only the destination host's processes (others on this machine may run the same program).
  let netns = -1;
  try { if (netnsPath) netns = fs.statSync(netnsPath).ino; } catch { /* unknown: no filter */ }
  const atDestination = (p: number) => {
    if (netns < 0) return true;
    try { return fs.statSync(`/proc/${p}/ns/net`).ino === netns; } catch { return false; }
  };
  const before = new Set(pidsNow());
  let peak = 0;
  const sample = () => {
    // The restored processes are found first (a scan of /proc takes
    // milliseconds under load), then the store and their RSS are read back to
    // back: a page placed between the two reads counts twice (in the store,
    // then in the process), and a fill places about 1 MiB a millisecond. A
    // sampler preempted between them (a loaded machine, 100 ms seen) would
    // count the pages placed meanwhile twice: such a sample is taken again,
    // and of MAX_TRIES the one whose reads were closest is kept.
    const restored = name ? pidsNow().filter((p) => !before.has(p) && comm(p) === name && atDestination(p)) : [];
    let best = 0;
    let bestGap = Infinity;
    for (let i = 0; i < MAX_TRIES && bestGap > MAX_GAP_MS; i++) {
      const t0 = performance.now();
      let bytes = 0;
      for (const d of dirs) bytes += allocatedBytes(d);
      for (const p of restored) bytes += rssBytes(p);
      const gap = performance.now() - t0;
      if (gap < bestGap) [best, bestGap] = [bytes, gap];
    }
    peak = Math.max(peak, best);
  };
  const t = setInterval(sample, intervalMs);
  sample();
  return {
    stop() {
      clearInterval(t);
      sample();
      return peak;
    },
  };
}
