// Reads pages back from a CRIU parent-image chain as PageStore.writeChain()
// leaves it on disk: in each level, pagemap-<id>.img lists that level's own
// ranges PE_PRESENT (their data, in order, in the level's pages file) and lower
// levels' ranges PE_PARENT; each level's `parent` link names the one below.
//
// It lets a process other than the agent answer for the store (hybrid mode's
// lazy-pages server, src/transport/lazy-fill-process.ts): once the restored
// tree runs, its memory must not depend on the agent staying alive.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PhaulError } from '../errors';
import { PAGE_SIZE, PE_PARENT, PE_PRESENT, readPagemapImage } from './pagemap-image';
import { firstEndingAfter } from './page-store';

/** A run of pages [start, end) of one image id with its data at `filePage` of files[file] (fd: its open descriptor). */
export interface ChainPiece {
  start: number;
  end: number;
  fd: number;
  file: number;
  filePage: number;
}
type Piece = ChainPiece;

const MAX_LEVELS = 64;

export class ChainReader {
  private readonly pieces = new Map<number, Piece[]>();
  private readonly fds: number[] = [];
  /** The pages files the pieces point into, by index. */
  readonly files: string[] = [];

  /** topDir: the chain's top level (what an image directory's `parent` link points at). */
  constructor(topDir: string) {
    const levels: string[] = [];
    for (let dir: string | null = path.resolve(topDir); dir; ) {
      if (levels.length >= MAX_LEVELS) throw new PhaulError('failed', `chain at ${topDir} is deeper than ${MAX_LEVELS} levels`);
      levels.push(dir);
      const link = path.join(dir, 'parent');
      dir = fs.existsSync(link) ? path.resolve(dir, fs.readlinkSync(link)) : null;
    }
    for (const name of fs.readdirSync(levels[0])) {
      const m = /^pagemap-(\d+)\.img$/.exec(name);
      if (m) this.pieces.set(Number(m[1]), this.resolve(levels, Number(m[1])));
    }
  }

  /** Every PE_PRESENT range of image `id`, from the level that holds it. */
  private resolve(levels: string[], id: number): Piece[] {
    const out: Piece[] = [];
    // Ranges still to find, top down: a level's PE_PARENT entries are looked up below it.
    let wanted: Array<[number, number]> | null = null;
    for (const dir of levels) {
      const pagemap = path.join(dir, `pagemap-${id}.img`);
      if (!fs.existsSync(pagemap)) break;
      const img = readPagemapImage(pagemap);
      const pagesFile = path.join(dir, `pages-${img.pagesId}.img`);
      const fd = fs.openSync(pagesFile, 'r');
      const file = this.files.length;
      this.fds.push(fd);
      this.files.push(pagesFile);
      const next: Array<[number, number]> = [];
      let filePage = 0;
      for (const e of img.entries) {
        const s = e.vaddr / PAGE_SIZE;
        const t = s + e.nrPages;
        if (e.flags & PE_PRESENT) {
          for (const [a, b] of clip(wanted, s, t)) out.push({ start: a, end: b, fd, file, filePage: filePage + (a - s) });
          filePage += e.nrPages;
        } else if (e.flags & PE_PARENT) {
          next.push(...clip(wanted, s, t));
        }
      }
      wanted = next;
      if (!wanted.length) break;
    }
    return out.sort((a, b) => a.start - b.start);
  }

  /** Image ids the chain has pages of. */
  ids(): number[] {
    return [...this.pieces.keys()];
  }

  /** Image `id`'s pieces, ascending and disjoint. */
  piecesOf(id: number): readonly ChainPiece[] {
    return this.pieces.get(id) ?? [];
  }

  /** Same contract as PageStore.firstMissing: the first page not held, or -1. */
  firstMissing(id: number, page: number, n: number): number {
    const list = this.pieces.get(id);
    if (!list) return page;
    let p = page;
    const end = page + n;
    for (let i = firstEndingAfter(list, p); p < end; i++) {
      const pc = list[i];
      if (!pc || pc.start > p) return p;
      p = Math.min(end, pc.end);
    }
    return -1;
  }

  /** Same contract as PageStore.readPages. Call firstMissing first. */
  readPages(id: number, page: number, n: number, buf: Uint8Array, bufOff = 0): void {
    const list = this.pieces.get(id) ?? [];
    let p = page;
    const end = page + n;
    for (let i = firstEndingAfter(list, p); p < end; i++) {
      const pc = list[i];
      if (!pc || pc.start > p) throw new PhaulError('failed', `chain holds no page 0x${(p * PAGE_SIZE).toString(16)} of image ${id}`);
      const stop = Math.min(end, pc.end);
      const len = (stop - p) * PAGE_SIZE;
      let done = 0;
      while (done < len) {
        const r = fs.readSync(pc.fd, buf, bufOff + (p - page) * PAGE_SIZE + done, len - done, (pc.filePage + (p - pc.start)) * PAGE_SIZE + done);
        if (r <= 0) throw new PhaulError('failed', `chain pages file ended early (image ${id})`);
        done += r;
      }
      p = stop;
    }
  }

  close(): void {
    for (const fd of this.fds.splice(0)) fs.closeSync(fd);
  }
}

/** [s, t) intersected with `wanted` (null: everything). */
function clip(wanted: Array<[number, number]> | null, s: number, t: number): Array<[number, number]> {
  if (!wanted) return [[s, t]];
  const out: Array<[number, number]> = [];
  for (const [a, b] of wanted) {
    const x = Math.max(a, s), y = Math.min(b, t);
    if (x < y) out.push([x, y]);
  }
  return out;
}

