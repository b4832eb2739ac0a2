// Page-sized buffers that are used again and again instead of allocated per batch.
//
// Why: on the machines this project runs on (virtual machines whose host takes
// free memory back), the first write to a page of fresh memory costs ~30-40 us
// (measured: 4 MiB of new anonymous memory takes 32-48 ms to fill the first
// time and 0.2 ms the second). A 4 MiB batch read into a new Buffer therefore
// moved at ~100 MB/s however fast the copy itself was, and the final round of
// pre-copy, inside the pause, paid it for every batch at both ends. Buffers
// from this pool are touched once, when created, and kept; they come from the
// addon (native/page_buffer.cc) in huge pages where the kernel has them, which
// makes that one touch ~10x cheaper too (one fault per 2 MiB).
//
//   const pool = new BufferPool(4 << 20, 6);
//   const buf = await pool.acquire();   // waits while all `max` are in use
//   ... pool.release(buf);              // exactly once per acquire
import { PhaulError } from '../errors';
import { addon } from '../native';

export class BufferPool {
  private readonly free: Buffer[] = [];
  private readonly waiting: Array<(b: Buffer) => void> = [];
  private created = 0;

  /** `size` bytes per buffer; at most `max` exist at once (acquire waits beyond that). */
  constructor(readonly size: number, readonly max: number) {
    if (!Number.isInteger(size) || size <= 0 || !Number.isInteger(max) || max < 1) {
      throw new PhaulError('failed', `BufferPool: bad size ${size} or count ${max}`);
    }
  }

  /** Buffers currently handed out. */
  get inUse(): number {
    return this.created - this.free.length;
  }

  /** A buffer of `size` bytes; waits for a release when `max` are in use. */
  acquire(): Promise<Buffer> {
    const b = this.tryAcquire();
    if (b) return Promise.resolve(b);
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  /** A buffer now, or undefined when `max` are in use. */
  tryAcquire(): Buffer | undefined {
    const b = this.free.pop();
    if (b) return b;
    if (this.created >= this.max) return undefined;
    this.created++;
    // Memory of its own (not Node's shared slab), touched now, once.
    return addon().allocPageBuffer(this.size);
  }

  /** Gives a buffer of this pool back (a view of one is accepted too). */
  release(b: Uint8Array): void {
    const whole = Buffer.from(b.buffer, 0, b.buffer.byteLength);
    if (whole.length !== this.size) throw new PhaulError('failed', 'BufferPool: released a buffer it did not give out');
    const next = this.waiting.shift();
    if (next) next(whole);
    else this.free.push(whole);
  }
}
