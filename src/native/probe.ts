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

/** What one write-protect fault costs here, ns per page (native/probe.h WpFaultCost). */
export interface WpFaultCost extends Probe {
  /** The first write to a write-protected page, less an unprotected write. */
  faultNs: number;
  /** The faulting pass's CPU per page by getrusage (coarse). */
  userNs: number;
  sysNs: number;
  /** A write to the same page unprotected. */
  plainNs: number;
  /** PAGEMAP_SCAN with WP_MATCHING, per page protected. */
  protectNs: number;
  /** Minor faults the protected pass took (one per page: 2048). */
  faults: number;
}

export interface ProbeNative {
  probeKernel(): KernelProbes;
  /** Times 4096 write-protect faults: tens of ms where they are slow (a PVM guest); never on a migration's path. */
  measureWpFault(): WpFaultCost;
}
