// What the figures were measured on.
import * as fs from 'node:fs';
import * as os from 'node:os';
import { runCmd } from '../src/testing/proc';
import { VERSION } from '../src/version';
import { measureWpFault } from '../src/check/kernel';

export interface Machine {
  cpu: string;
  cores: number;
  memGiB: number;
  kernel: string;
  os: string;
  criu: string;
  node: string;
  phaulFast: string;
  date: string;
  /** One write-protect fault here, µs (check's "write-protect fault"): what pre-copy's rounds cost a writer per page and round. */
  wpFaultUs: number | null;
}

export async function describeMachine(criu: string): Promise<Machine> {
  let distro = 'linux';
  try {
    distro = /^PRETTY_NAME="?([^"\n]+)/m.exec(fs.readFileSync('/etc/os-release', 'utf8'))?.[1] ?? distro;
  } catch { /* keep the default */ }
  const v = await runCmd([criu, '--version'], { timeoutMs: 10_000 });
  const wpFault = measureWpFault();
  return {
    cpu: os.cpus()[0]?.model.trim() ?? 'unknown',
    cores: os.cpus().length,
    memGiB: Math.round(os.totalmem() / 2 ** 30),
    kernel: os.release(),
    os: distro,
    criu: /Version:\s*(\S+)/.exec(v.stdout)?.[1] ?? 'unknown',
    node: process.version,
    phaulFast: VERSION,
    date: new Date().toISOString(),
    wpFaultUs: wpFault ? Math.round(wpFault.faultNs / 100) / 10 : null,
  };
}
