// Human form of a SystemReport: one line per item, "item: value (evidence) —
// enables X", then the modes, then what to install or enable.
import { MODES } from '../agent/capabilities';
import type { SystemReport } from './index';

const yes = (b: boolean) => (b ? 'yes' : 'no');

export function formatReport(r: SystemReport): string {
  const { criu, features: f, details: d } = r;
  const criuValue = criu.path
    ? `${yes(criu.ok)} (${criu.path}, version ${criu.version ?? 'unknown'}; criu check: ${criu.check}; libcriu RPC check: ${criu.rpcOk ? 'ok' : criu.rpcDetail})`
    : 'no (no CRIU binary found)';
  const freezer = d.freezer.v2 || d.freezer.v1
    ? [d.freezer.v2 && `v2 at ${d.freezer.v2}`, d.freezer.v1 && `v1 at ${d.freezer.v1}`].filter(Boolean).join(', ') + ', probe cgroup froze'
    : d.freezer.detail;
  const rows: [string, string, string][] = [
    ['criu', criuValue, 'every mode: checkpoint and restore'],
    ['dirty tracking', `${yes(r.facts.dirtyTracking.ok)} (${r.facts.dirtyTracking.detail})`, 'precopy, hybrid: what our tracker checks before it starts'],
    ['uffd-wp async', `${yes(f.uffdWpAsync)} (${d.uffdWpAsync})`, 'dirty tracking, with PAGEMAP_SCAN'],
    ['PAGEMAP_SCAN', `${yes(f.pagemapScan)} (${d.pagemapScan})`, 'dirty tracking: the written pages of a process in one ioctl'],
    ['uffd-wp tracking', `${yes(d.wpTracking)} (${d.wpTrackingDetail})`, 'proof that the two above track writes here'],
    ['zero page', `${yes(d.zeroPage)} (${d.zeroPageDetail})`, 'cheap reads of untouched memory; without it, whatever reads a sparse mapping makes it resident'],
    ['write-protect fault', `${d.wpFaultUs === null ? 'unknown' : `${d.wpFaultUs} µs`} (${d.wpFaultDetail})`, ''],
    ['lazy dump', `${yes(r.facts.lazyDump.ok)} (${r.facts.lazyDump.detail})`, "precopy, hybrid, postcopy: CRIU's lazy dump at switchover"],
    ['lazy restore', `${yes(r.facts.lazyRestore.ok)} (${r.facts.lazyRestore.detail})`, 'hybrid, postcopy: resume before the memory is back'],
    ['nftables', `${yes(f.nftables)} (${d.nftables})`, 'TCP migrations: the network lock without iptables'],
    // Reported, not used by any mode: CRIU's own pre-copy (soft-dirty) and a cgroup freeze.
    ['soft-dirty', `${yes(f.softDirty)} (${d.softDirty})`, ''],
    ['freezer', `${yes(f.freezer)} (${freezer})`, ''],
    ['kernel', `${r.kernel.release} (${r.kernel.version})`, ''],
    ['cpu', `${r.cpu.arch}, ${r.cpu.model}, ${r.cpu.cores} cores, ${r.cpu.flags.length} feature flags`, ''],
  ];
  const lines = [`phaul-fast ${r.phaulFast} check`, ''];
  for (const [item, value, enables] of rows) lines.push(`  ${item}: ${value}${enables ? ` — enables ${enables}` : ''}`);
  lines.push('', 'container runtimes:');
  for (const rt of r.runtimes) {
    lines.push(`  ${rt.name}: ${rt.path ? `${rt.path}${rt.version ? ` ${rt.version}` : ''}, ${rt.migratable ? 'migratable' : 'not migratable'} (${rt.detail})` : rt.detail}`);
  }
  lines.push('', 'modes (migrate --mode):');
  for (const mode of MODES) {
    const v = r.modeDetails[mode];
    lines.push(`  ${mode.padEnd(10)} ${v.available ? 'available' : 'unavailable'} (${v.why})`);
  }
  if (r.autoMode) lines.push(`  migrate --mode auto picks ${r.autoMode} here (if the destination offers it too)`);
  if (r.missing.length) {
    lines.push('', 'to install or enable:');
    for (const a of r.missing) lines.push(`  - ${a.item}: ${a.fix}`);
  }
  return `${lines.join('\n')}\n`;
}
