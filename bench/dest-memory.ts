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
    let bytes = 0;
    for (const d of dirs) bytes += allocatedBytes(d);
    if (name) for (const p of pidsNow()) if (!before.has(p) && comm(p) === name && atDestination(p)) bytes += rssBytes(p);
    peak = Math.max(peak, bytes);
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
