// The destination side of postcopy (docs/DESIGN.md section 8, Postcopy): the pages
// that arrive on the data streams go into one pages file, each into the slot
// its layout index gives it (layout.ts), and every run written is said
// present to the lazy-pages server (native/lazy_fill.h ControlRecord), which
// copies only present pages and holds a fault on any other until it is. What
// the server asks for (a fault waits) goes to the source as `page-request`.
// When the source is gone the control socket is ended: the server then fails
// if pages are missing, and the agent stops the copy.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import type { Duplex } from 'node:stream';
import { PhaulError } from '../errors';
import type { PageBatch } from '../store/batch';
import { PAGE_SIZE } from '../store/pagemap-image';
import type { PostcopyLayout } from './layout';

const write = promisify(fs.write);
/**
 * Runs shorter than this are written at once, longer ones on the thread pool.
 * A fault waits for the short ones (requested pages come 64 KiB at a time);
 * behind the push's 4 MiB writes in the pool they would wait tens of ms.
 */
const SYNC_WRITE_BYTES = 256 << 10;
const RECORD = 24;
const PRESENT = 1;
const NEED = 2;
export const PAGES_FILE = 'postcopy.pages';

export class PostcopyReceiver {
  readonly file: string;
  private readonly fd: number;
  /** Per page: 1 once written (a page is written once: it may be punched out after its copy). */
  private readonly got: Uint8Array;
  private needIn: Buffer = Buffer.alloc(0);
  private ended = false;
  /** Pages written (or recorded as zeros), of layout.pages. */
  receivedPages = 0;

  /**
   * dir: an empty directory (a page store's, under the sweep's prefix).
   * imageIds: host pid of the source's process -> its image id.
   */
  constructor(readonly layout: PostcopyLayout, dir: string, private readonly imageIds: Map<number, number>,
    private readonly control: Duplex, onNeed: (page: number, pages: number) => void) {
    this.file = path.join(dir, PAGES_FILE);
    this.fd = fs.openSync(this.file, 'wx', 0o600);
    fs.ftruncateSync(this.fd, layout.pages * PAGE_SIZE);
    this.got = new Uint8Array(layout.pages);
    control.on('error', () => undefined); // the server ends it when it is done or fails
    control.on('data', (d: Buffer) => {
      this.needIn = this.needIn.length ? Buffer.concat([this.needIn, d]) : d;
      let at = 0;
      for (; this.needIn.length - at >= RECORD; at += RECORD) {
        if (this.needIn.readUInt32LE(at) !== NEED) continue;
        const off = Number(this.needIn.readBigUInt64LE(at + 8));
        const len = Number(this.needIn.readBigUInt64LE(at + 16));
        onNeed(off / PAGE_SIZE, len / PAGE_SIZE);
      }
      this.needIn = this.needIn.subarray(at);
    });
  }

  /** Writes a batch's pages into their slots and says them present (those already there are skipped). */
  async write(b: PageBatch): Promise<void> {
    const id = this.imageIds.get(b.pid);
    if (id === undefined) throw new PhaulError('protocol', `postcopy batch for pid ${b.pid}, which the tree does not have`);
    let dataOff = 0;
    const present: Array<[number, number]> = [];
    for (const r of b.ranges) {
      const vaddr = Number(r.vaddr);
      const first = this.layout.pageOf(id, vaddr);
      const run = first < 0 ? undefined : this.layout.runAt(first);
      if (!run || first + r.nrPages > run.page + run.pages)
        throw new PhaulError('protocol', `postcopy batch: pages at 0x${vaddr.toString(16)} of image ${id} are not lazy pages of its images`);
      const bytes = r.zero ? 0 : r.nrPages * PAGE_SIZE;
      if (dataOff + bytes > b.data.length) throw new PhaulError('protocol', 'postcopy batch: less data than its ranges say');
      for (let p = first, end = first + r.nrPages; p < end;) {
        if (this.got[p]) { p++; continue; }
        let q = p;
        // Taken before the write: a copy of these pages on another stream meanwhile is skipped.
        while (q < end && !this.got[q]) this.got[q++] = 1;
        // Zero pages need no write: the file's hole reads as zeros.
        if (!r.zero) {
          const from = dataOff + (p - first) * PAGE_SIZE;
          const len = (q - p) * PAGE_SIZE;
          // A nearly full file system writes part and says how much: the rest is written (or fails) next.
          for (let done = 0; done < len;) {
            const n = len - done < SYNC_WRITE_BYTES
              ? fs.writeSync(this.fd, b.data, from + done, len - done, p * PAGE_SIZE + done)
              : (await write(this.fd, b.data, from + done, len - done, p * PAGE_SIZE + done)).bytesWritten;
            if (n <= 0) throw new PhaulError('failed', `postcopy pages file: nothing written at page ${p}`);
            done += n;
          }
        }
        this.receivedPages += q - p;
        present.push([p, q]);
        p = q;
      }
      dataOff += bytes;
    }
    if (present.length && !this.ended) {
      const rec = Buffer.alloc(RECORD * present.length);
      present.forEach(([p, q], i) => {
        rec.writeUInt32LE(PRESENT, i * RECORD);
        rec.writeUInt32LE(0, i * RECORD + 4);
        rec.writeBigUInt64LE(BigInt(p * PAGE_SIZE), i * RECORD + 8);
        rec.writeBigUInt64LE(BigInt((q - p) * PAGE_SIZE), i * RECORD + 16);
      });
      this.control.write(rec);
    }
  }

  /** No more pages can come (the source or the link is gone): the server fails if it still lacks some. */
  sourceGone(): void {
    if (this.ended) return;
    this.ended = true;
    this.control.end();
  }

  close(): void {
    try { fs.closeSync(this.fd); } catch { /* closed */ }
  }
}
