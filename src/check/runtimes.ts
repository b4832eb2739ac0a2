// Container runtimes on this host, and whether CRIU works with each: the ones
// `migrate --container` drives, and the ones it does not (yet), said plainly.
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
  for (const name of ['runc', 'crun', 'podman']) {
    const p = which(name) ?? null;
    if (!p) {
      out.push({ name, path: null, version: null, migratable: false, detail: 'not installed' });
      continue;
    }
    const v = await exec(p, ['--version'], 10_000);
    const version = v.code === 0 ? (oneLine(v).match(/\d+\.\d+(\.\d+)?/)?.[0] ?? null) : null;
    if (name !== 'runc') {
      out.push({ name, path: p, version, migratable: false, detail: 'found; phaul-fast migrate --container drives runc only' });
      continue;
    }
    const lock = runcNetworkLock();
    const own = lock === 'nftables' || which('iptables-restore')
      ? `runc's own checkpoint/restore locks the network with ${lock}`
      : `runc's own checkpoint/restore would use ${lock}, absent here: add 'network-lock nftables' to ${RUNC_CRIU_CONF} (npm run setup does)`;
    const migratable = criuOk && nftables;
    const why = !criuOk ? 'CRIU does not work here (see criu above)' : !nftables ? 'CRIU lacks the nftables network lock a container\'s network namespace needs' : 'CRIU works with it (phaul-fast dumps as runc does, with the nftables lock)';
    out.push({ name, path: p, version, migratable, detail: `${why}; ${own}` });
  }
  return out;
}
