// Human form of a SystemReport: one line per item, "item: value (evidence) —
// enables X", then the modes, then what to install or enable.
import { AUTO_ORDER } from '../agent/capabilities';
import { MODES } from '../agent/migrate';
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
    ['soft-dirty', `${yes(f.softDirty)} (${d.softDirty})`, "precopy with CRIU's own memory tracking (pre-dump, --track-mem)"],
    ['uffd-wp async', `${yes(f.uffdWpAsync)} (${d.uffdWpAsync})`, 'precopy with our dirty tracker, together with PAGEMAP_SCAN'],
    ['PAGEMAP_SCAN', `${yes(f.pagemapScan)} (${d.pagemapScan})`, 'precopy: the written pages of a process in one ioctl'],
    ['uffd-wp tracking', `${yes(d.wpTracking)} (${d.wpTrackingDetail})`, 'precopy: proof that the two above track writes here'],
    ['zero page', `${yes(d.zeroPage)} (${d.zeroPageDetail})`, 'cheap reads of untouched memory; without it, whatever reads a sparse mapping makes it resident'],
    ['lazy pages', `${yes(f.lazyPages)} (${d.lazyPages})`, 'postcopy: restore before the memory has arrived'],
    ['freezer', `${yes(f.freezer)} (${freezer})`, 'freezing a whole process tree at switchover'],
    ['nftables', `${yes(f.nftables)} (${d.nftables})`, 'TCP migrations: the network lock without iptables'],
    ['kernel', `${r.kernel.release} (${r.kernel.version})`, ''],
    ['cpu', `${r.cpu.arch}, ${r.cpu.model}, ${r.cpu.cores} cores, ${r.cpu.flags.length} feature flags`, ''],
  ];
  const lines = [`phaul-fast ${r.phaulFast} check`, ''];
  for (const [item, value, enables] of rows) lines.push(`  ${item}: ${value}${enables ? ` — enables ${enables}` : ''}`);
  lines.push('', 'container runtimes:');
  for (const rt of r.runtimes) {
    lines.push(`  ${rt.name}: ${rt.path ? `${rt.path}${rt.version ? ` ${rt.version}` : ''}, ${rt.migratable ? 'migratable' : 'not migratable'} (${rt.detail})` : rt.detail}`);
  }
  lines.push('', 'modes:');
  const how: Record<string, string> = {
    precopy: f.softDirty ? 'soft-dirty' : 'uffd-wp async + PAGEMAP_SCAN',
    postcopy: 'CRIU lazy pages',
    hybrid: 'precopy, then lazy restore',
    'stop-copy': 'CRIU dump + restore',
  };
  const offered = MODES as readonly string[];
  for (const [mode, ok] of Object.entries(r.modes)) {
    const state = !ok ? 'unavailable' : offered.includes(mode) ? `available (${how[mode]})` : `this machine could (${how[mode]}); not a migrate mode yet`;
    lines.push(`  ${mode.padEnd(10)} ${state}`);
  }
  const auto = AUTO_ORDER.find((m) => (r.modes as Record<string, boolean>)[m]);
  if (auto) lines.push(`  migrate --mode auto picks ${auto} here (if the destination offers it too)`);
  if (r.missing.length) {
    lines.push('', 'to install or enable:');
    for (const a of r.missing) lines.push(`  - ${a.item}: ${a.fix}`);
  }
  if (!f.softDirty && r.modes.precopy) lines.push('', 'note: soft-dirty is not needed here: uffd-wp async + PAGEMAP_SCAN track dirty pages instead.');
  return `${lines.join('\n')}\n`;
}
