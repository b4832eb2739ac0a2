// What native/probe.cc exports: kernel features, each exercised on a few pages
// of this process, never inferred from the kernel version.

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

export interface ProbeNative {
  probeKernel(): KernelProbes;
}
