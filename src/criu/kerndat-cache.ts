// CRIU probes the kernel's features at every start ("kerndat": 100-300 ms
// measured here under load) unless it finds them cached in /run/criu.kdat.
// CRIU writes that cache only when /run is a tmpfs (so that a reboot into
// another kernel clears it); where /run is on disk it never does, and every
// dump and restore probes again: the destination's restore did so inside the
// pause. So, where /run is not a tmpfs, we have CRIU write its cache in a
// private tmpfs (its own code and format) and install the result, and we
// write it again after every boot, since nothing clears it then. CRIU itself
// deletes a cache of another CRIU build as stale (size and magic checks; the
// magic is the build's time unless SOURCE_DATE_EPOCH fixes it, which setup
// does: scripts/setup.sh kdat-magic), so the destination checks again at
// each migration's prepare.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';

export const KDAT_FILE = '/run/criu.kdat';
const TMPFS_MAGIC = 0x01021994;

/** When this boot began (ms since the epoch). */
function bootTimeMs(): number {
  const m = /^btime (\d+)$/m.exec(fs.readFileSync('/proc/stat', 'utf8'));
  return m ? Number(m[1]) * 1000 : 0;
}

/**
 * Makes sure `criu` finds its kernel-probe cache; returns what it did
 * ('tmpfs': CRIU caches by itself, 'fresh': a cache of this boot is there,
 * 'written', or 'failed: why'). Never throws: without a cache CRIU is only
 * slower. Runs CRIU once when it writes (~0.1-0.5 s), at agent start.
 */
export function ensureKerndatCache(criu: string): string {
  try {
    if (fs.statfsSync('/run').type === TMPFS_MAGIC) return 'tmpfs';
    try {
      if (fs.statSync(KDAT_FILE).mtimeMs > bootTimeMs()) return 'fresh';
    } catch { /* none yet */ }
    // `criu check` probes and saves; in its own mount namespace /run is a new tmpfs, so it may.
    const kdat = execFileSync('unshare', ['--mount', '--propagation', 'private', 'sh', '-c',
      'mount -t tmpfs -o size=1m,mode=755 phaul-fast-kdat /run && "$0" check >/dev/null 2>&1; cat /run/criu.kdat', criu],
    { timeout: 30_000, stdio: ['ignore', 'pipe', 'ignore'], maxBuffer: 1 << 20 });
    if (kdat.length < 64) return 'failed: criu wrote no cache';
    const tmp = `${KDAT_FILE}.phaul-fast.${process.pid}`;
    fs.writeFileSync(tmp, kdat, { mode: 0o600 });
    fs.renameSync(tmp, KDAT_FILE);
    return 'written';
  } catch (e) {
    return `failed: ${(e as Error).message.split('\n')[0]}`;
  }
}
