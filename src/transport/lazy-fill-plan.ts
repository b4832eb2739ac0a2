// What the lazy-pages server (native/lazy_fill.cc) fills, per image id: every
// page the restore's pagemaps leave lazy, with where its data is in the page
// store's chain (src/store/chain-reader.ts). Built before the tree runs: a
// lazy page the store does not hold fails it here, not as a page of zeros.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PhaulError } from '../errors';
import type { ChainReader } from '../store/chain-reader';
import { PAGE_SIZE, PE_LAZY, PE_PRESENT, readPagemapImage } from '../store/pagemap-image';
import { firstEndingAfter } from '../store/page-store';
import type { FillImage } from '../native';

export interface FillPlan {
  files: string[];
  images: FillImage[];
  pages: number;
}

/** The lazy pages of the restore's images in imagesDir, located in `chain`. */
export function fillPlan(imagesDir: string, chain: ChainReader): FillPlan {
  const images: FillImage[] = [];
  let pages = 0;
  for (const name of fs.readdirSync(imagesDir)) {
    const m = /^pagemap-(\d+)\.img$/.exec(name);
    if (!m) continue;
    const id = Number(m[1]);
    const pieces = chain.piecesOf(id);
    const out: number[] = [];
    for (const e of readPagemapImage(path.join(imagesDir, name)).entries) {
      if (!(e.flags & PE_LAZY) || (e.flags & PE_PRESENT)) continue;
      let p = e.vaddr / PAGE_SIZE;
      const end = p + e.nrPages;
      for (let i = firstEndingAfter(pieces, p); p < end; i++) {
        const pc = pieces[i];
        if (!pc || pc.start > p) {
          throw new PhaulError('failed', `image ${id} lists page 0x${(p * PAGE_SIZE).toString(16)} as lazy, but the page store does not hold it`);
        }
        const stop = Math.min(end, pc.end);
        const off = (pc.filePage + (p - pc.start)) * PAGE_SIZE;
        const n = out.length;
        // Contiguous in memory and in the same file: one extent.
        if (n && out[n - 3] === p * PAGE_SIZE && out[n - 2] === pc.file && out[n - 1] + (out[n - 3] - out[n - 4]) === off) {
          out[n - 3] = stop * PAGE_SIZE;
        } else {
          out.push(p * PAGE_SIZE, stop * PAGE_SIZE, pc.file, off);
        }
        pages += stop - p;
        p = stop;
      }
    }
    if (out.length) images.push({ id, extents: Float64Array.from(out) });
  }
  return { files: chain.files, images, pages };
}
