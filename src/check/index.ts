// checkSystem(): what this machine can do for migrations, measured, not assumed
// from versions. The CLI (`phaul-fast check`) prints it; embedders call it.
// Which modes are available is not decided here: the facts go through the
// capability model (src/agent/capabilities.ts) that migrate and serve use.
import { judgeModes, MODES, pickAuto, probeHostFacts, type HostFacts, type Mode, type ModeVerdict } from '../agent/capabilities';
import { VERSION } from '../version';
import { checkCriu, type CriuReport } from './criu';
import { checkFreezer, checkNftCli, cpuInfo, kernelInfo, type CpuInfo, type FreezerReport, type KernelInfo } from './host';
import { LAZY_PIPE_BYTES, measureWpFault, pipeMaxSize, probeKernel } from './kernel';
import { checkRuntimes, type RuntimeReport } from './runtimes';

/** The CRIU that `npm run setup` builds (scripts/setup.sh CRIU_VERSION). */
const SETUP_CRIU = '4.2.1';

export { MODES, type Mode };

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
  /** The facts the modes depend on, as the capability model reads them. */
  facts: HostFacts;
  /** Exactly the modes `migrate --mode` accepts: true where this host can run it. */
  modes: Record<Mode, boolean>;
  /** Per mode: what it uses, or what is missing. */
  modeDetails: Record<Mode, ModeVerdict>;
  /** What `migrate --mode auto` picks when the destination offers the same (null: nothing works). */
  autoMode: Mode | null;
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
    /** One write-protect fault (the first write to a page a pre-copy round protected), µs; null where it cannot be timed. */
    wpFaultUs: number | null;
    wpFaultDetail: string;
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

function advise(r: Omit<SystemReport, 'missing'>): Advice[] {
  const out: Advice[] = [];
  const { criu, facts, features: f, details: d } = r;
  if (!criu.path) {
    out.push({ item: 'criu', fix: `no CRIU binary: run \`npm run setup\` (builds CRIU ${SETUP_CRIU} into .criu/) or set PHAUL_FAST_CRIU` });
  } else if (!criu.checkOk) {
    out.push({ item: 'criu', fix: `\`${criu.path} check\` fails (${criu.check}); CRIU < 4.1 fails on kernels >= 6.13: run \`npm run setup\` for CRIU ${SETUP_CRIU}` });
  } else if (!criu.rpcOk) {
    out.push({ item: 'criu', fix: `the addon's libcriu call fails (${criu.rpcDetail}): rebuild with \`npm run setup\`` });
  }
  if (!facts.dirtyTracking.ok) {
    out.push({ item: 'precopy, hybrid', fix: `need dirty-page tracking (${facts.dirtyTracking.detail}): Linux >= 6.7 with CONFIG_USERFAULTFD=y and CONFIG_PTE_MARKER_UFFD_WP=y` });
  }
  if (!facts.lazyDump.ok) {
    out.push({ item: 'precopy, hybrid, postcopy', fix: `CRIU's lazy dump needs bigger pipes: ${facts.lazyDump.detail}; setup does it, persist it in /etc/sysctl.d` });
  }
  if (!facts.lazyRestore.ok) {
    out.push({ item: 'hybrid, postcopy', fix: `needs a lazy restore (${facts.lazyRestore.detail}): CONFIG_USERFAULTFD=y; as non-root also sysctl vm.unprivileged_userfaultfd=1` });
  }
  if (!f.nftables) out.push({ item: 'nftables', fix: `TCP migrations need CRIU's nftables network lock (${d.nftables}): apt-get install nftables libnftables1, and a CRIU built with libnftables-dev` });
  return out;
}

/** Probes CRIU, the kernel and the host; never throws for a missing feature. */
export async function checkSystem(opts: CheckOptions = {}): Promise<SystemReport> {
  const k = probeKernel();
  const wpFault = k.wpTracking.ok ? measureWpFault() : null;
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
  const facts = probeHostFacts({ ok: criu.ok, detail: criu.ok ? `CRIU ${criu.version ?? '?'} at ${criu.path}` : criu.path ? criu.check : 'no CRIU binary found' });
  const modeDetails = judgeModes(facts);
  const available = MODES.filter((m) => modeDetails[m].available);
  const base: Omit<SystemReport, 'missing'> = {
    phaulFast: VERSION,
    criu,
    features,
    facts,
    modes: Object.fromEntries(MODES.map((m) => [m, modeDetails[m].available])) as Record<Mode, boolean>,
    modeDetails,
    autoMode: available.length ? pickAuto(available) : null,
    details: {
      softDirty: k.softDirty.detail,
      uffdWpAsync: k.uffdWpAsync.detail,
      pagemapScan: k.pagemapScan.detail,
      wpTracking: k.wpTracking.ok,
      wpTrackingDetail: k.wpTracking.detail,
      zeroPage: k.zeroPage.ok,
      zeroPageDetail: k.zeroPage.detail,
      wpFaultUs: wpFault ? Math.round(wpFault.faultNs / 100) / 10 : null,
      wpFaultDetail: wpFault ? `${wpFault.detail}; a workload pays it once per page it writes again in each pre-copy round` : 'not timed (no uffd-wp tracking)',
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
