// Host facts outside the addon: the cgroup freezer (v2 and v1, exercised on an
// empty probe cgroup of our own that is removed again), nftables, kernel, CPU.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { exec, oneLine } from './exec';

export interface FreezerReport {
  ok: boolean;
  /** cgroup2 mount where a probe cgroup froze, or null. */
  v2: string | null;
  /** cgroup v1 freezer mount where a probe cgroup froze, or null. */
  v1: string | null;
  detail: string;
}

interface Mount { dir: string; type: string; options: string[] }

function mounts(): Mount[] {
  try {
    return fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').filter(Boolean).map((l) => {
      const f = l.split(' ');
      // Mount points escape blanks as octal (\040).
      const dir = f[1].replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
      return { dir, type: f[2], options: (f[3] ?? '').split(',') };
    });
  } catch {
    return [];
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Freezes an empty probe cgroup under `mount`; returns '' or why it failed. */
async function freezeProbe(mount: string, v2: boolean): Promise<string> {
  const dir = path.join(mount, `phaul-fast-probe-${process.pid}-${Math.random().toString(36).slice(2, 8)}`);
  try {
    await fs.promises.mkdir(dir);
  } catch (err) {
    // Read-only cgroupfs (a container): still say whether the interface exists.
    const present = fs.existsSync(path.join(mount, v2 ? 'cgroup.subtree_control' : 'freezer.state'));
    return `cannot create a probe cgroup (${(err as NodeJS.ErrnoException).code})${present ? ', interface present' : ''}`;
  }
  try {
    const [file, on, off] = v2 ? ['cgroup.freeze', '1', '0'] : ['freezer.state', 'FROZEN', 'THAWED'];
    await fs.promises.writeFile(path.join(dir, file), on);
    // An empty cgroup freezes at once; allow a moment anyway.
    for (let i = 0; i < 50; i++) {
      const state = v2 ? await fs.promises.readFile(path.join(dir, 'cgroup.events'), 'utf8') : await fs.promises.readFile(path.join(dir, file), 'utf8');
      if (v2 ? /^frozen 1$/m.test(state) : state.trim() === 'FROZEN') {
        await fs.promises.writeFile(path.join(dir, file), off);
        return '';
      }
      await sleep(20);
    }
    return 'probe cgroup did not report frozen';
  } catch (err) {
    return `${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`;
  } finally {
    await fs.promises.rmdir(dir).catch(() => undefined);
  }
}

export async function checkFreezer(): Promise<FreezerReport> {
  const ms = mounts();
  const v2m = ms.filter((m) => m.type === 'cgroup2').map((m) => m.dir);
  const v1m = ms.filter((m) => m.type === 'cgroup' && m.options.includes('freezer')).map((m) => m.dir);
  const notes: string[] = [];
  let v2: string | null = null;
  let v1: string | null = null;
  for (const m of v2m) {
    const why = await freezeProbe(m, true);
    if (!why) { v2 = m; notes.push(`v2 at ${m}`); break; }
    notes.push(`v2 at ${m}: ${why}`);
  }
  for (const m of v1m) {
    const why = await freezeProbe(m, false);
    if (!why) { v1 = m; notes.push(`v1 at ${m}`); break; }
    notes.push(`v1 at ${m}: ${why}`);
  }
  if (!v2m.length && !v1m.length) notes.push('no cgroup2 mount and no v1 freezer mount');
  return { ok: v1 !== null || v2 !== null, v1, v2, detail: notes.join('; ') };
}

export interface NftReport {
  /** `nft list tables` ran and succeeded (needed to clean up a lock CRIU left behind). */
  cli: boolean;
  detail: string;
}

export async function checkNftCli(): Promise<NftReport> {
  const r = await exec('nft', ['list', 'tables'], 10_000);
  if (r.code === 0) return { cli: true, detail: 'nft list tables works' };
  return { cli: false, detail: r.code === null ? `nft: ${r.error}` : `nft list tables: ${oneLine(r) || `exit ${r.code}`}` };
}

export interface KernelInfo { release: string; version: string }
export interface CpuInfo { arch: string; model: string; cores: number; flags: string[] }

export function kernelInfo(): KernelInfo {
  return { release: os.release(), version: os.version() };
}

export function cpuInfo(): CpuInfo {
  let text = '';
  try { text = fs.readFileSync('/proc/cpuinfo', 'utf8'); } catch { /* reported as unknown */ }
  const field = (name: string) => new RegExp(`^${name}\\s*:\\s*(.*)$`, 'm').exec(text)?.[1]?.trim();
  // x86 says "model name"/"flags", arm64 "CPU part"/"Features".
  const model = field('model name') ?? field('CPU part') ?? os.cpus()[0]?.model ?? 'unknown';
  const flags = (field('flags') ?? field('Features') ?? '').split(/\s+/).filter(Boolean);
  return { arch: os.machine(), model, cores: os.cpus().length, flags };
}
