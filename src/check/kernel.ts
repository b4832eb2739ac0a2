// The addon's kernel probes (native/probe.cc): each feature is exercised on a
// few pages of this process, never inferred from the kernel version.
import * as fs from 'node:fs';

export interface Probe {
  ok: boolean;
  detail: string;
}

export interface KernelProbes {
  userfaultfd: Probe & { features: string; wpUnpopulated: boolean };
  uffdWpAsync: Probe;
  pagemapScan: Probe;
  /** uffd-wp async + PAGEMAP_SCAN together found exactly the pages written. */
  wpTracking: Probe;
  softDirty: Probe;
  /** Reading untouched anonymous memory maps the shared zero page (false: reads allocate). */
  zeroPage: Probe;
}

export function probeKernel(): KernelProbes {
  let native: { probeKernel(): KernelProbes };
  try {
    // Loaded here so a missing addon becomes a reported fact.
    native = (require('../native') as { native: typeof native }).native;
  } catch (err) {
    const detail = `addon not loaded (run npm run setup): ${err instanceof Error ? err.message.split('\n')[0] : String(err)}`;
    const no = { ok: false, detail };
    return { userfaultfd: { ...no, features: '0x0', wpUnpopulated: false }, uffdWpAsync: no, pagemapScan: no, wpTracking: no, softDirty: no, zeroPage: no };
  }
  return native.probeKernel();
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
