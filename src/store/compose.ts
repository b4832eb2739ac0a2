// Turns CRIU's lazy dump images plus the page store into images a plain
// `criu restore -D DIR` accepts (docs/DESIGN.md section 6, docs/IMAGES.md).
//
// chain (default): CRIU's lazy ranges become PE_PARENT|PE_LAZY, in_parent,
//   no data, resolved through a `parent` link to the store's top level; the
//   entries CRIU wrote data for keep CRIU's pages file untouched. Cost: one
//   small pagemap per pid per level, independent of memory size and of the
//   final dirty set (the store wrote that in place as it arrived).
// flat: every entry PE_PRESENT and a new pages file holding CRIU's data and
//   the store's pages in pagemap order. Copies all memory: O(memory). Kept
//   as the reference and for restores that cannot follow a parent link.
//
// CRIU's pagemap is the authority: only the ranges it lists are restored, and
// a lazy page it lists that the store does not hold fails the composition
// before any file is changed.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PhaulError } from '../errors';
import { USER_ADDR_LIMIT, pageHex } from './batch';
import type { PageStore } from './page-store';
import {
  PAGE_SIZE, PE_LAZY, PE_PARENT, PE_PRESENT, encodePagemap, presentPages, readPagemapImage, writeFileAtomic,
  type PagemapEntry, type PagemapImage,
} from './pagemap-image';

export interface ComposeOptions {
  /** CRIU's images from `criu dump --lazy-pages`, as received. */
  criuDir: string;
  store: PageStore;
  /** Where the restorable images go; default: composed in place in criuDir. */
  outDir?: string;
  /** 'lazy' (hybrid): lazy entries stay lazy, without a parent: the lazy restore asks the store itself. */
  mode?: 'chain' | 'flat' | 'lazy';
  /**
   * CRIU image id (the N of pagemap-N.img: the pid inside the dumped tree's
   * pid namespace) -> the pid the store's batches used. Default: the same number.
   */
  imageIds?: ReadonlyMap<number, number> | Readonly<Record<number, number>>;
}

export interface ComposeStats {
  mode: 'chain' | 'flat' | 'lazy';
  /** pagemap-<pid>.img files composed. */
  images: number;
  entries: number;
  /** Pages whose data CRIU wrote itself (non-lazy memory), kept as they are. */
  presentPages: number;
  /** Lazy pages taken from the store (by reference in chain mode, copied in flat mode). */
  storePages: number;
  /** Bytes written into page files (0 in chain mode). */
  bytesCopied: number;
  /** Store levels linked (chain mode). */
  levels: number;
  /** Lazy pages left out because their newest copy is all zeros (chain and lazy modes). */
  zeroPages: number;
  /** Chain and lazy modes: the top level of the store's parent-image chain (unset when no page comes from the store). */
  chainTop?: string;
  /** Wall time, including waiting for the store's last writes. */
  ms: number;
}

interface Plan {
  imageId: number;
  pid: number;
  file: string;
  img: PagemapImage;
  pagesFile: string;
  lazyPages: number;
  present: number;
}

const PAGEMAP_RE = /^pagemap-(\d+)\.img$/;
const COPY_CHUNK = 4 << 20;

function fail(msg: string): PhaulError {
  return new PhaulError('failed', `compose: ${msg}`);
}

export async function composeImages(opts: ComposeOptions): Promise<ComposeStats> {
  const t0 = performance.now();
  const mode = opts.mode ?? 'chain';
  const { store } = opts;
  await store.finalizeParent();
  const dir = path.resolve(opts.outDir ?? opts.criuDir);
  if (dir !== path.resolve(opts.criuDir)) copyImages(opts.criuDir, dir);
  const idMap = toMap(opts.imageIds);

  // Check everything first: a failure leaves the images as CRIU wrote them.
  const plans: Plan[] = [];
  for (const name of fs.readdirSync(dir).sort()) {
    const m = PAGEMAP_RE.exec(name);
    if (!m) continue; // pagemap-shmem-* and everything else stay as they are
    const imageId = Number(m[1]);
    const file = path.join(dir, name);
    const img = readPagemapImage(file);
    const pid = idMap.get(imageId) ?? imageId;
    const pagesFile = path.join(dir, `pages-${img.pagesId}.img`);
    const present = presentPages(img);
    const size = fileSize(pagesFile);
    if (size !== present * PAGE_SIZE) throw fail(`${path.basename(pagesFile)} has ${size} bytes, ${name} lists ${present} present pages (${present * PAGE_SIZE} bytes)`);
    let lazyPages = 0;
    let prevEnd = 0;
    for (const e of img.entries) {
      // Images come from the source: an entry we would turn into reads of the store must be sane.
      if (e.vaddr % PAGE_SIZE || e.vaddr < prevEnd || e.nrPages < 1 || e.vaddr + e.nrPages * PAGE_SIZE > USER_ADDR_LIMIT) {
        throw fail(`${name}: entry at 0x${e.vaddr.toString(16)} (${e.nrPages} pages) is unaligned, out of order or outside user space`);
      }
      prevEnd = e.vaddr + e.nrPages * PAGE_SIZE;
      if (e.flags & PE_PARENT) throw fail(`${name} has a parent entry at 0x${e.vaddr.toString(16)}: not the images of a lazy dump`);
      if (e.flags & PE_PRESENT) continue;
      if (!(e.flags & PE_LAZY)) throw fail(`${name}: entry at 0x${e.vaddr.toString(16)} has flags ${e.flags}`);
      const miss = store.firstMissing(pid, e.vaddr / PAGE_SIZE, e.nrPages);
      if (miss >= 0) throw fail(`CRIU lists page ${pageHex(miss)} of pid ${imageId} (store pid ${pid}) as lazy, but the page store does not hold it`);
      lazyPages += e.nrPages;
    }
    plans.push({ imageId, pid, file, img, pagesFile, lazyPages, present });
  }

  const stats: ComposeStats = { mode, images: plans.length, entries: 0, presentPages: 0, storePages: 0, bytesCopied: 0, levels: 0, zeroPages: 0, ms: 0 };
  for (const p of plans) {
    stats.entries += p.img.entries.length;
    stats.presentPages += p.present;
    stats.storePages += p.lazyPages;
  }
  if (mode === 'chain') composeChain(dir, store, plans, stats);
  else if (mode === 'flat') composeFlat(store, plans, stats);
  else composeLazy(store, plans, stats);
  stats.ms = performance.now() - t0;
  return stats;
}

function composeChain(dir: string, store: PageStore, plans: Plan[], stats: ComposeStats): void {
  const users = plans.filter((p) => p.lazyPages > 0);
  if (users.length) {
    // Parent pagemaps first, then the link, then the child pagemaps: until the
    // last step the directory still holds CRIU's own images.
    const top = store.writeChain(new Map(users.map((p) => [p.imageId, p.pid])));
    stats.chainTop = top;
    const link = path.join(dir, 'parent');
    fs.rmSync(link, { force: true });
    // Relative: a container's restore opens it after CRIU entered the
    // container's root, where an absolute path to the store does not exist.
    fs.symlinkSync(path.relative(dir, top), link);
    stats.levels = store.levels;
  }
  for (const p of users) {
    const entries = withoutZeroPages(store, p, stats, (e) => ({ ...e, flags: PE_PARENT | PE_LAZY, inParent: true }));
    writeFileAtomic(p.file, encodePagemap({ pagesId: p.img.pagesId, entries }));
  }
}

/** Hybrid: CRIU's lazy entries stay lazy (served from the store on demand), minus all-zero pages. */
function composeLazy(store: PageStore, plans: Plan[], stats: ComposeStats): void {
  const users = plans.filter((p) => p.lazyPages > 0);
  // The chain's pagemaps (no `parent` link from the images: the restore must
  // not read them) are how another process finds the store's pages by image id.
  if (users.length) stats.chainTop = store.writeChain(new Map(users.map((p) => [p.imageId, p.pid])));
  for (const p of plans) {
    if (p.lazyPages === 0) continue;
    const entries = withoutZeroPages(store, p, stats, (e) => e);
    writeFileAtomic(p.file, encodePagemap({ pagesId: p.img.pagesId, entries }));
  }
}

/**
 * The plan's entries with each lazy one cut down to the runs whose newest copy
 * holds data, mapped through `lazy`. Pages left out get no entry, so nothing
 * populates them and they read as zeros, as they were: CRIU lists
 * never-touched pages of write-protected mappings (uffd-wp markers look like
 * swap entries), and restoring them would make a sparse mapping resident.
 */
function withoutZeroPages(store: PageStore, p: Plan, stats: ComposeStats, lazy: (e: PagemapEntry) => PagemapEntry): PagemapEntry[] {
  const out: PagemapEntry[] = [];
  for (const e of p.img.entries) {
    if (e.flags & PE_PRESENT) { out.push(e); continue; }
    let kept = 0;
    for (const r of store.dataRuns(p.pid, e.vaddr / PAGE_SIZE, e.nrPages)) {
      out.push(lazy({ ...e, vaddr: r.page * PAGE_SIZE, nrPages: r.n }));
      kept += r.n;
    }
    stats.zeroPages += e.nrPages - kept;
  }
  return out;
}

function composeFlat(store: PageStore, plans: Plan[], stats: ComposeStats): void {
  const buf = Buffer.allocUnsafe(COPY_CHUNK);
  for (const p of plans) {
    if (p.lazyPages === 0) continue;
    // Pages first (under a temporary name), the pagemap last.
    const tmp = `${p.pagesFile}.tmp-${process.pid}`;
    const src = fs.openSync(p.pagesFile, 'r');
    const dst = fs.openSync(tmp, 'w');
    try {
      let srcPos = 0, dstPos = 0;
      const maxPages = COPY_CHUNK / PAGE_SIZE;
      for (const e of p.img.entries) {
        for (let done = 0; done < e.nrPages; done += maxPages) {
          const n = Math.min(maxPages, e.nrPages - done);
          const len = n * PAGE_SIZE;
          if (e.flags & PE_PRESENT) {
            readFull(src, buf, len, srcPos);
            srcPos += len;
          } else {
            store.readPages(p.pid, e.vaddr / PAGE_SIZE + done, n, buf);
          }
          writeFull(dst, buf, len, dstPos);
          dstPos += len;
        }
      }
      stats.bytesCopied += dstPos;
    } finally {
      fs.closeSync(src);
      fs.closeSync(dst);
    }
    fs.renameSync(tmp, p.pagesFile);
    const entries = p.img.entries.map((e) => ({ vaddr: e.vaddr, nrPages: e.nrPages, flags: e.flags | PE_PRESENT, inParent: false }));
    writeFileAtomic(p.file, encodePagemap({ pagesId: p.img.pagesId, entries }));
  }
}

function copyImages(from: string, to: string): void {
  fs.mkdirSync(to, { recursive: true });
  for (const e of fs.readdirSync(from, { withFileTypes: true })) {
    if (e.isFile() && e.name !== 'parent') fs.copyFileSync(path.join(from, e.name), path.join(to, e.name));
  }
}

function toMap(ids: ComposeOptions['imageIds']): Map<number, number> {
  if (!ids) return new Map();
  if (ids instanceof Map) return new Map(ids);
  return new Map(Object.entries(ids).map(([k, v]) => [Number(k), v as number]));
}

function fileSize(file: string): number {
  try {
    return fs.statSync(file).size;
  } catch {
    return 0;
  }
}

function readFull(fd: number, buf: Buffer, len: number, pos: number): void {
  let done = 0;
  while (done < len) {
    const n = fs.readSync(fd, buf, done, len - done, pos + done);
    if (n <= 0) throw fail(`short read of CRIU's pages at ${pos + done}`);
    done += n;
  }
}

function writeFull(fd: number, buf: Buffer, len: number, pos: number): void {
  let done = 0;
  while (done < len) done += fs.writeSync(fd, buf, done, len - done, pos + done);
}
