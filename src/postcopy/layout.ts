// Postcopy's page numbering (docs/DESIGN.md section 8, Postcopy): every page CRIU's
// lazy dump left out of its images (pagemap entries PE_LAZY, not PE_PRESENT)
// gets an index, image by image (ascending id) and address by address. Both
// ends compute it from the same pagemap images, so a page travels as its
// index alone: the source finds (process, address) to read it from, the
// destination the offset of its slot in one pages file (index * 4 KiB) that
// the lazy-pages server copies from.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PhaulError } from '../errors';
import { PAGE_SIZE, PE_LAZY, PE_PRESENT, readPagemapImage } from '../store/pagemap-image';
import type { FillImage } from '../native';

/** Pages [page, page + pages) of the numbering are image `id`'s at vaddr on. */
export interface LazyRun {
  id: number;
  vaddr: number;
  page: number;
  pages: number;
}

export class PostcopyLayout {
  /** Ascending by page (and, within an image, by vaddr). */
  readonly runs: readonly LazyRun[];
  readonly pages: number;
  private readonly byImage = new Map<number, LazyRun[]>();

  constructor(runs: LazyRun[]) {
    this.runs = runs;
    const last = runs[runs.length - 1];
    this.pages = last ? last.page + last.pages : 0;
    for (const r of runs) {
      const list = this.byImage.get(r.id) ?? [];
      list.push(r);
      this.byImage.set(r.id, list);
    }
  }

  /** The lazy pages of the images in imagesDir (the lazy dump's, unchanged). */
  static read(imagesDir: string): PostcopyLayout {
    const ids: number[] = [];
    for (const name of fs.readdirSync(imagesDir)) {
      const m = /^pagemap-(\d+)\.img$/.exec(name);
      if (m) ids.push(Number(m[1]));
    }
    ids.sort((a, b) => a - b);
    const runs: LazyRun[] = [];
    let page = 0;
    for (const id of ids) {
      let lastEnd = 0;
      for (const e of readPagemapImage(path.join(imagesDir, `pagemap-${id}.img`)).entries) {
        if (!(e.flags & PE_LAZY) || e.flags & PE_PRESENT) continue;
        if (e.vaddr < lastEnd) throw new PhaulError('protocol', `pagemap-${id}.img: entries out of order at 0x${e.vaddr.toString(16)}`);
        lastEnd = e.vaddr + e.nrPages * PAGE_SIZE;
        runs.push({ id, vaddr: e.vaddr, page, pages: e.nrPages });
        page += e.nrPages;
      }
    }
    return new PostcopyLayout(runs);
  }

  /** The run holding page index `page` (binary search), or undefined. */
  runAt(page: number): LazyRun | undefined {
    let lo = 0;
    let hi = this.runs.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.runs[mid].page + this.runs[mid].pages <= page) lo = mid + 1;
      else hi = mid;
    }
    const r = this.runs[lo];
    return r && r.page <= page ? r : undefined;
  }

  /** The index of image `id`'s page at vaddr, or -1 when it is not lazy. */
  pageOf(id: number, vaddr: number): number {
    const list = this.byImage.get(id);
    if (!list) return -1;
    let lo = 0;
    let hi = list.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (list[mid].vaddr + list[mid].pages * PAGE_SIZE <= vaddr) lo = mid + 1;
      else hi = mid;
    }
    const r = list[lo];
    if (!r || r.vaddr > vaddr) return -1;
    return r.page + Math.floor((vaddr - r.vaddr) / PAGE_SIZE);
  }

  /** [page, page + pages) cut at run boundaries, as (run, first page in it, count). */
  *pieces(page: number, pages: number): Generator<{ run: LazyRun; page: number; pages: number }> {
    const end = Math.min(page + pages, this.pages);
    while (page < end) {
      const run = this.runAt(page);
      if (!run) return;
      const n = Math.min(end, run.page + run.pages) - page;
      yield { run, page, pages: n };
      page += n;
    }
  }

  /** The lazy-pages server's extents: each image's runs, in one pages file (index 0) at page * 4 KiB. */
  fillImages(): FillImage[] {
    const out: FillImage[] = [];
    for (const [id, list] of this.byImage) {
      const ext: number[] = [];
      for (const r of list) ext.push(r.vaddr, r.vaddr + r.pages * PAGE_SIZE, 0, r.page * PAGE_SIZE);
      out.push({ id, extents: Float64Array.from(ext) });
    }
    return out;
  }
}
