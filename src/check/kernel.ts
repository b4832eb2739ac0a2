// The addon's kernel probes (native/probe.cc): each feature is exercised on a
// few pages of this process, never inferred from the kernel version.
import * as fs from 'node:fs';
import { addonStatus, addon, type KernelProbes, type WpFaultCost } from '../native';

export type { KernelProbes, Probe, WpFaultCost } from '../native';

/** The probes; without the addon every one fails with the loader's reason. */
export function probeKernel(): KernelProbes {
  const st = addonStatus();
  if (!st.ok) {
    const no = { ok: false, detail: st.problem };
    return { userfaultfd: { ...no, features: '0x0', wpUnpopulated: false }, uffdWpAsync: no, pagemapScan: no, wpTracking: no, softDirty: no, zeroPage: no };
  }
  return addon().probeKernel();
}

/**
 * What one write-protect fault costs here (timed on 2048 pages of this
 * process): a workload pays it once per page it writes again in each
 * pre-copy round. Null without the addon or without uffd-wp.
 */
export function measureWpFault(): WpFaultCost | null {
  if (!addonStatus().ok) return null;
  const c = addon().measureWpFault();
  return c.ok ? c : null;
}

/** fs.pipe-max-size in bytes (CRIU's lazy dump needs >= 4 MiB), or null if unreadable. */
export function pipeMaxSize(): number | null {
  try {
    return parseInt(fs.readFileSync('/proc/sys/fs/pipe-max-size', 'utf8'), 10);
  } catch {
    return null;
  }
}

export const LAZY_PIPE_BYTES = 4 * 1024 * 1024;
