// Sends CRIU's images (everything in the dump's directory but its logs and
// its gate FIFO) as `image` messages, inside the pause.
//
// Memory a process touches for the first time is slow on a VM whose
// hypervisor takes free memory back (docs/BENCH.md, "Where hybrid's pause goes"):
// reading a 600 KiB pages image into a fresh buffer and encoding it into
// another cost 7-14 ms here, against 0.1 ms to read it into memory touched
// before. So the images are read in slices into one buffer touched before the
// freeze (warm()) and written from it without copying (FrameConn.sendWithData).
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { FrameConn } from '../protocol/frames';

/** Bytes per `image` message; a larger image goes as several (append). */
const SLICE = 1 << 20;

export class ImageSender {
  private buf?: Buffer;

  /** Touches the buffer now, before the freeze, so that no page of it is first touched inside the pause. */
  warm(): this {
    this.buf ??= Buffer.allocUnsafeSlow(SLICE).fill(0);
    return this;
  }

  /** Sends every image in `dir`; returns their bytes. */
  async send(conn: FrameConn, dir: string): Promise<number> {
    const buf = this.warm().buf!;
    let bytes = 0;
    for (const ent of fs.readdirSync(dir, { withFileTypes: true })) {
      const name = ent.name;
      if (name.endsWith('.log') || !ent.isFile()) continue; // not the dump's gate FIFO either
      const fd = fs.openSync(path.join(dir, name), 'r');
      try {
        let off = 0;
        for (;;) {
          const n = fs.readSync(fd, buf, 0, buf.length, off);
          // The first slice even when empty: the destination creates the file from it.
          if (n === 0 && off > 0) break;
          await conn.sendWithData({ t: 'image', name, data: buf.subarray(0, n), append: off > 0 });
          off += n;
          if (n < buf.length) break;
        }
        bytes += off;
      } finally {
        fs.closeSync(fd);
      }
    }
    return bytes;
  }
}
