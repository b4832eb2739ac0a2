// checkSystem(): what this machine can do for migrations, measured, not assumed
// from versions. The CLI (`phaul-fast check`) prints it; embedders call it.
import { VERSION } from '../version';
import { checkCriu, type CriuReport } from './criu';
import { checkFreezer, checkNftCli, cpuInfo, kernelInfo, type CpuInfo, type FreezerReport, type KernelInfo } from './host';
import { LAZY_PIPE_BYTES, pipeMaxSize, probeKernel } from './kernel';
import { checkRuntimes, type RuntimeReport } from './runtimes';

export type Mode = 'stop-copy' | 'precopy' | 'postcopy' | 'hybrid';
export const MODES: readonly Mode[] = ['stop-copy', 'precopy', 'postcopy', 'hybrid'];

export interface Features {
  softDirty: boolean;
  uffdWpAsync: boolean;
  pagemapScan: boolean;
  lazyPages: boolean;
  freezer: boolean;
  nftables: boolean;
}

export interface Advice {
  item: string;
  /** What to install or enable, one line. */
  fix: string;
}

export interface SystemReport {
  phaulFast: string;
  criu: CriuReport;
  features: Features;
  modes: Record<Mode, boolean>;
  /** Evidence behind each feature, one line each, plus raw facts. */
  details: {
    softDirty: string;
    uffdWpAsync: string;
    pagemapScan: string;
    wpTracking: boolean;
    wpTrackingDetail: string;
    /** Reads of untouched anonymous memory map the shared zero page (false: they allocate it). */
    zeroPage: boolean;
    zeroPageDetail: string;
    userfaultfd: boolean;
    userfaultfdDetail: string;
    uffdFeatures: string;
    pipeMaxSize: number | null;
    lazyPages: string;
    freezer: FreezerReport;
    nftables: string;
  };
  kernel: KernelInfo;
  cpu: CpuInfo;
  /** Container runtimes found, and whether migrate --container can move their containers. */
  runtimes: RuntimeReport[];
  /** Missing things that limit the modes or the workloads, with the fix. */
  missing: Advice[];
}

export interface CheckOptions {
  /** CRIU binary to check instead of the one phaul-fast would use. */
  criuBinary?: string;
}

/** The mode rules, given the measured facts (exported for tests and the planner). */
export function modesFor(criuOk: boolean, f: Features, wpTracking: boolean): Record<Mode, boolean> {
  const precopy = criuOk && (f.softDirty || (f.uffdWpAsync && f.pagemapScan && wpTracking));
  const postcopy = criuOk && f.lazyPages;
  return { 'stop-copy': criuOk, precopy, postcopy, hybrid: precopy && postcopy };
}

function advise(r: Omit<SystemReport, 'missing'>): Advice[] {
  const out: Advice[] = [];
  const { criu, features: f, details: d } = r;
  if (!criu.path) {
    out.push({ item: 'criu', fix: 'no CRIU binary: run `npm run setup` (builds CRIU 4.1.1 into .criu/) or set PHAUL_FAST_CRIU' });
  } else if (!criu.checkOk) {
    out.push({ item: 'criu', fix: `\`${criu.path} check\` fails (${criu.check}); CRIU < 4.1 fails on kernels >= 6.13: run \`npm run setup\` for CRIU 4.1.1` });
  } else if (!criu.rpcOk) {
    out.push({ item: 'criu', fix: `the addon's libcriu call fails (${criu.rpcDetail}): rebuild with \`npm run setup\`` });
  }
  const trackerOk = f.uffdWpAsync && f.pagemapScan && d.wpTracking;
  if (!f.softDirty && !trackerOk) {
    const why = [!f.uffdWpAsync && 'UFFD_FEATURE_WP_ASYNC', !f.pagemapScan && 'PAGEMAP_SCAN', f.uffdWpAsync && f.pagemapScan && !d.wpTracking && 'working uffd-wp tracking']
      .filter(Boolean).join(', ');
    out.push({ item: 'precopy', fix: `needs dirty-page tracking: Linux >= 6.7 with CONFIG_USERFAULTFD=y and CONFIG_PTE_MARKER_UFFD_WP=y (missing here: ${why}), or a kernel with CONFIG_MEM_SOFT_DIRTY=y` });
  }
  if (!f.lazyPages) {
    if (!d.userfaultfd) out.push({ item: 'lazy pages', fix: `userfaultfd unusable (${d.userfaultfdDetail}): needs CONFIG_USERFAULTFD=y; as non-root also sysctl vm.unprivileged_userfaultfd=1` });
    if (criu.path && criu.checkOk && !criu.features['uffd-noncoop']) out.push({ item: 'lazy pages', fix: 'CRIU reports uffd-noncoop unsupported: the kernel lacks non-cooperative userfaultfd events' });
    if (d.pipeMaxSize === null || d.pipeMaxSize < LAZY_PIPE_BYTES)
      out.push({ item: 'lazy pages', fix: `fs.pipe-max-size is ${d.pipeMaxSize ?? 'unreadable'}: sysctl -w fs.pipe-max-size=${LAZY_PIPE_BYTES} (npm run setup does it; persist it in /etc/sysctl.d)` });
  }
  if (!f.freezer) out.push({ item: 'freezer', fix: `no usable cgroup freezer (${d.freezer.detail}): mount cgroup v2 (mount -t cgroup2 none /sys/fs/cgroup) or the v1 freezer controller` });
  if (!f.nftables) out.push({ item: 'nftables', fix: `TCP migrations need CRIU's nftables network lock (${d.nftables}): apt-get install nftables libnftables1, and a CRIU built with libnftables-dev` });
  return out;
}

/** Probes CRIU, the kernel and the host; never throws for a missing feature. */
export async function checkSystem(opts: CheckOptions = {}): Promise<SystemReport> {
  const k = probeKernel();
  const [criu, freezer, nft] = await Promise.all([checkCriu(opts.criuBinary), checkFreezer(), checkNftCli()]);
  const pipe = pipeMaxSize();
  const criuUffd = criu.checkOk ? criu.features['uffd-noncoop'] : true; // only CRIU's say when CRIU runs
  const lazyPages = k.userfaultfd.ok && criuUffd && pipe !== null && pipe >= LAZY_PIPE_BYTES;
  // CRIU does the network lock, so its answer decides; without CRIU, the nft CLI.
  const nftables = criu.checkOk ? criu.features.network_lock_nftables : nft.cli;
  const features: Features = {
    softDirty: k.softDirty.ok,
    uffdWpAsync: k.uffdWpAsync.ok,
    pagemapScan: k.pagemapScan.ok,
    lazyPages,
    freezer: freezer.ok,
    nftables,
  };
  const lazyDetail = [
    `userfaultfd ${k.userfaultfd.ok ? 'works' : `unusable (${k.userfaultfd.detail})`}`,
    criu.checkOk ? `CRIU uffd-noncoop ${criu.features['uffd-noncoop'] ? 'supported' : 'unsupported'}` : 'CRIU not checked',
    `fs.pipe-max-size ${pipe ?? 'unreadable'} (needs >= ${LAZY_PIPE_BYTES})`,
  ].join(', ');
  const nftDetail = [
    criu.checkOk ? `CRIU network_lock_nftables ${criu.features.network_lock_nftables ? 'supported' : 'unsupported'}` : 'CRIU not checked',
    nft.detail,
  ].join(', ');
  const base: Omit<SystemReport, 'missing'> = {
    phaulFast: VERSION,
    criu,
    features,
    modes: modesFor(criu.ok, features, k.wpTracking.ok),
    details: {
      softDirty: k.softDirty.detail,
      uffdWpAsync: k.uffdWpAsync.detail,
      pagemapScan: k.pagemapScan.detail,
      wpTracking: k.wpTracking.ok,
      wpTrackingDetail: k.wpTracking.detail,
      zeroPage: k.zeroPage.ok,
      zeroPageDetail: k.zeroPage.detail,
      userfaultfd: k.userfaultfd.ok,
      userfaultfdDetail: k.userfaultfd.detail,
      uffdFeatures: k.userfaultfd.features,
      pipeMaxSize: pipe,
      lazyPages: lazyDetail,
      freezer,
      nftables: nftDetail,
    },
    kernel: kernelInfo(),
    cpu: cpuInfo(),
    runtimes: await checkRuntimes(criu.ok, nftables),
  };
  return { ...base, missing: advise(base) };
}

export { formatReport } from './format';
