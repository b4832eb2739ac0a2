// The memory of a process that appeared after the last live scan, read once
// while the tree is frozen. Such a process (forked between the last scan and
// CRIU's freeze) cannot get a tracker then: injecting our userfaultfd() needs
// ptrace, which CRIU holds. Frozen, it cannot write either, so one reading of
// its mappings and page map is exact: every private page present or swapped
// (for file mappings, only the process's own anonymous copies), which is what
// CRIU would list for it. The result has the shape of a tracker's first scan.
import * as fs from 'node:fs';
import { RANGE_PRESENT, VMA_EXEC, VMA_FILE, VMA_READ, VMA_SHARED, VMA_TRACKED, VMA_WRITE } from './ranges';

const PAGE = 4096n;
const PM_PRESENT = 1n << 63n;
const PM_SWAP = 1n << 62n;
/** File page or shared anonymous: not the process's own copy. */
const PM_FILE = 1n << 61n;
/** The kernel's special mappings CRIU handles itself. */
const SPECIAL = new Set(['[vvar]', '[vdso]', '[vsyscall]', '[vvar_vclock]']);
const CHUNK_PAGES = 1n << 16n;

export interface FrozenSnapshot {
  /** [start, end, VMA_* flags] triples (private mappings flagged VMA_TRACKED: their pages are sent). */
  vmas: BigUint64Array;
  /** [start, end, RANGE_PRESENT] triples: the pages to send. */
  ranges: BigUint64Array;
  pages: number;
}

/** Reads `pid`'s private pages from /proc; undefined if it is gone. */
export function frozenSnapshot(pid: number): FrozenSnapshot | undefined {
  let maps: string;
  let fd: number;
  try {
    maps = fs.readFileSync(`/proc/${pid}/maps`, 'utf8');
    fd = fs.openSync(`/proc/${pid}/pagemap`, 'r');
  } catch {
    return undefined;
  }
  const vmas: bigint[] = [];
  const ranges: bigint[] = [];
  let pages = 0;
  try {
    for (const line of maps.split('\n')) {
      const m = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ (\d+)\s*(.*)$/.exec(line);
      if (!m) continue;
      const start = BigInt(`0x${m[1]}`);
      const end = BigInt(`0x${m[2]}`);
      const perms = m[3];
      const file = m[4] !== '0';
      const name = m[5].trim();
      if (SPECIAL.has(name)) continue;
      const priv = perms[3] === 'p';
      let flags = (perms[0] === 'r' ? VMA_READ : 0) | (perms[1] === 'w' ? VMA_WRITE : 0) | (perms[2] === 'x' ? VMA_EXEC : 0) |
        (priv ? VMA_TRACKED : VMA_SHARED) | (file ? VMA_FILE : 0);
      vmas.push(start, end, BigInt(flags));
      if (!priv) continue; // shared memory is not a process's own (CRIU dumps it apart)
      flags = 0;
      let runStart = -1n;
      const buf = Buffer.alloc(Number(CHUNK_PAGES) * 8);
      for (let at = start; at < end; at += CHUNK_PAGES * PAGE) {
        const n = (end - at) / PAGE < CHUNK_PAGES ? (end - at) / PAGE : CHUNK_PAGES;
        const got = fs.readSync(fd, buf, 0, Number(n) * 8, Number((at / PAGE) * 8n));
        for (let i = 0; i < Number(n); i++) {
          const addr = at + BigInt(i) * PAGE;
          const e = i * 8 < got ? buf.readBigUInt64LE(i * 8) : 0n;
          const own = (e & PM_SWAP) !== 0n || ((e & PM_PRESENT) !== 0n && (!file || (e & PM_FILE) === 0n));
          if (own && runStart < 0n) runStart = addr;
          if (!own && runStart >= 0n) {
            ranges.push(runStart, addr, BigInt(RANGE_PRESENT));
            pages += Number((addr - runStart) / PAGE);
            runStart = -1n;
          }
        }
      }
      if (runStart >= 0n) {
        ranges.push(runStart, end, BigInt(RANGE_PRESENT));
        pages += Number((end - runStart) / PAGE);
      }
    }
  } catch {
    return undefined; // gone while we read
  } finally {
    fs.closeSync(fd);
  }
  return { vmas: BigUint64Array.from(vmas), ranges: BigUint64Array.from(ranges), pages };
}
