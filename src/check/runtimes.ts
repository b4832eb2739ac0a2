// Container runtimes on this host, and whether CRIU works with each: the ones
// `migrate --container` drives (runc; podman through runc), and the ones it
// does not (crun), said plainly.
import * as fs from 'node:fs';
import { which } from '../util/which';
import { exec, oneLine } from './exec';

export interface RuntimeReport {
  name: string;
  /** Where it is, or null when not installed. */
  path: string | null;
  version: string | null;
  /** phaul-fast migrate --container can move its containers here. */
  migratable: boolean;
  /** Why (not), one line: CRIU, the network lock, support in phaul-fast. */
  detail: string;
}

const RUNC_CRIU_CONF = '/etc/criu/runc.conf';


/** What runc's own checkpoint would use for the network lock (its CRIU reads /etc/criu/runc.conf). */
function runcNetworkLock(): string {
  let conf = '';
  try { conf = fs.readFileSync(RUNC_CRIU_CONF, 'utf8'); } catch { /* none */ }
  const m = /^\s*network-lock\s+(\S+)/m.exec(conf);
  return m ? m[1] : 'iptables (CRIU\'s default)';
}

export async function checkRuntimes(criuOk: boolean, nftables: boolean): Promise<RuntimeReport[]> {
  const out: RuntimeReport[] = [];
  const found = new Map<string, { path: string; text: string; version: string | null }>();
  for (const name of ['runc', 'crun', 'podman']) {
    const p = which(name);
    if (!p) continue;
    const v = await exec(p, ['--version'], 10_000);
    found.set(name, { path: p, text: v.stdout, version: v.code === 0 ? (oneLine(v).match(/\d+\.\d+(\.\d+)?/)?.[0] ?? null) : null });
  }
  const criuWhy = !criuOk ? 'CRIU does not work here (see criu above)'
    : !nftables ? 'CRIU lacks the nftables network lock a container\'s network namespace needs' : undefined;
  // crun links CRIU itself, when built with it; its --version lists +CRIU then.
  const crun = found.get('crun');
  const crunCriu = !!crun && /\+CRIU\b/.test(crun.text);
  for (const name of ['runc', 'crun', 'podman']) {
    const f = found.get(name);
    if (!f) {
      out.push({ name, path: null, version: null, migratable: false, detail: 'not installed' });
      continue;
    }
    const report = (migratable: boolean, detail: string) => out.push({ name, path: f.path, version: f.version, migratable, detail });
    if (name === 'runc') {
      const lock = runcNetworkLock();
      const own = lock === 'nftables' || which('iptables-restore')
        ? `runc's own checkpoint/restore locks the network with ${lock}`
        : `runc's own checkpoint/restore would use ${lock}, absent here: add 'network-lock nftables' to ${RUNC_CRIU_CONF} (npm run setup does)`;
      report(!criuWhy, `${criuWhy ?? 'CRIU works with it (phaul-fast dumps as runc does, with the nftables lock)'}; ${own}`);
    } else if (name === 'crun') {
      report(false, crunCriu ? 'built with CRIU, but phaul-fast moves runc containers only (podman: --runtime runc)'
        : 'built without CRIU (no +CRIU in crun --version): it cannot checkpoint; phaul-fast moves runc containers (podman: --runtime runc)');
    } else {
      const why = criuWhy ?? (!found.has('runc') ? 'runc is not installed: podman\'s containers move only when it runs them with runc' : undefined);
      report(!why, why ?? 'migrate --runtime podman moves containers podman runs with runc (podman --runtime runc), in stop-copy and ' +
        `precopy: podman ${f.version ?? ''} restores from a checkpoint archive, never lazily (no hybrid); the destination needs the image`);
    }
  }
  return out;
}
