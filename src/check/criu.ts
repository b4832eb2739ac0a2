// CRIU as this machine really has it: which binary, what `criu --version` and
// `criu check` say, whether the addon's libcriu path talks to it, and CRIU's
// own view of the kernel features we care about (`criu check --feature`).
import { criuBinary, criuCheck } from '../criu';
import { exec, oneLine } from './exec';

export interface CriuReport {
  /** Binary checked; null when none was found. */
  path: string | null;
  /** "4.1.1", or null when it did not run. */
  version: string | null;
  /** `criu check` passed and the addon's RPC check passed. */
  ok: boolean;
  /** What `criu check` printed (or why it could not run). */
  check: string;
  checkOk: boolean;
  /** The same check through libcriu/RPC, the path dump and restore take. */
  rpcOk: boolean;
  rpcDetail: string;
  /** `criu check --feature NAME` results: true = supported. */
  features: Record<string, boolean>;
}

/** CRIU features whose answer we report (names as CRIU 4.1 spells them). */
export const CRIU_FEATURES = ['mem_dirty_track', 'uffd-noncoop', 'pagemap_scan', 'network_lock_nftables'] as const;

function findBinary(override?: string): string | null {
  if (override) return override;
  try {
    return criuBinary();
  } catch {
    return null;
  }
}

async function rpcCheck(binary: string): Promise<{ ok: boolean; detail: string }> {
  try {
    await criuCheck({ criuBinary: binary, timeoutMs: 60_000 });
    return { ok: true, detail: 'ok' };
  } catch (err) {
    return { ok: false, detail: err instanceof Error ? err.message : String(err) };
  }
}

export async function checkCriu(override?: string): Promise<CriuReport> {
  const path = findBinary(override);
  const features: Record<string, boolean> = {};
  if (!path) {
    return { path: null, version: null, ok: false, check: 'no CRIU binary found', checkOk: false, rpcOk: false, rpcDetail: 'no CRIU binary', features };
  }
  const [ver, chk, rpc, ...feats] = await Promise.all([
    exec(path, ['--version']),
    exec(path, ['check'], 60_000),
    rpcCheck(path),
    ...CRIU_FEATURES.map((f) => exec(path, ['check', '--feature', f])),
  ]);
  CRIU_FEATURES.forEach((f, i) => { features[f] = feats[i].code === 0; });
  const version = /^Version:\s*(\S+)/m.exec(ver.stdout)?.[1] ?? null;
  const checkOk = chk.code === 0;
  const check = chk.code === null ? `could not run: ${chk.error}` : oneLine(chk) || `exit ${chk.code}`;
  return { path, version, ok: checkOk && rpc.ok, check, checkOk, rpcOk: rpc.ok, rpcDetail: rpc.detail, features };
}

/** Compares dotted versions numerically: -1, 0 or 1. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map((x) => parseInt(x, 10) || 0);
  const pb = b.split('.').map((x) => parseInt(x, 10) || 0);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d) return d < 0 ? -1 : 1;
  }
  return 0;
}
