// Encode/decode throughput of page batches, 64 MiB at a time: raw, lz4 on
// synthetic pages, lz4 on random data (which goes raw), the 4 MiB batches
// pre-copy sends, and 4 batches compressed in parallel on the thread pool.
// Prints; asserts only that what was decoded is what was encoded.
//
//   node dist/bench/measure/page-batch.js
import * as assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as os from 'node:os';
import { MAX_RAW_BYTES, encodeBatch, encodeBatchAsync, type PageBatch } from '../../src/transport/page-batch';
import { BatchDecoder } from '../../src/transport/batch-stream';
import { syntheticPages } from '../../src/transport/compression';

import { PAGE_SIZE as P } from '../../src/util/page-size';

async function main(): Promise<void> {
  const n = MAX_RAW_BYTES / P;
  const content = syntheticPages(MAX_RAW_BYTES);
  // 64 MiB as 1024 ranges of 16 pages with a gap after each, and a zero range after every 8th (no data on the wire).
  const ranges: Array<{ vaddr: number; nrPages: number; zero: boolean }> = [];
  for (let i = 0, v = 0x10000000; i < n / 16; i++, v += 64 * P) {
    ranges.push({ vaddr: v, nrPages: 16, zero: false });
    if (i % 8 === 7) ranges.push({ vaddr: v + 32 * P, nrPages: 16, zero: true });
  }
  const batch: PageBatch = { pid: 42, round: 1, ranges, data: content };
  const random: PageBatch = { ...batch, data: crypto.randomBytes(MAX_RAW_BYTES) };
  const gbps = (bytes: number, t0: bigint) => (bytes / Number(process.hrtime.bigint() - t0)).toFixed(2);
  const split = (w: Buffer) => { const c: Buffer[] = []; for (let o = 0; o < w.length; o += 65536) c.push(w.subarray(o, o + 65536)); return c; };
  const lines: string[] = [];
  for (const [name, b, compress] of [['raw', batch, false], ['lz4 synthetic', batch, true], ['lz4 on, random (goes raw)', random, true]] as const) {
    let t0 = process.hrtime.bigint();
    const bufs = encodeBatch(b, { compress });
    const enc = gbps(MAX_RAW_BYTES, t0);
    const w = Buffer.concat(bufs);
    const chunks = split(w);
    const d = new BatchDecoder();
    t0 = process.hrtime.bigint();
    const out: PageBatch[] = [];
    for (const c of chunks) for (const x of d.push(c)) out.push(x);
    const dec = gbps(MAX_RAW_BYTES, t0);
    assert.equal(out.length, 1);
    assert.ok(Buffer.from(out[0].data).equals(b.data as Buffer));
    lines.push(`# 64 MiB ${name}: encode ${enc} GB/s${compress ? '' : ' (header only: the payload is not copied)'}, decode from 64 KiB chunks ${dec} GB/s, wire ${(w.length / 2 ** 20).toFixed(1)} MiB`);
  }
  // The size pre-copy actually uses: 16 batches of 4 MiB (caches and allocator reuse help).
  for (const compress of [false, true]) {
    const small = Array.from({ length: 16 }, (_, i): PageBatch => ({ pid: 42, round: 1, ranges: [{ vaddr: i * 2 ** 30, nrPages: n / 16 }], data: content.subarray(i * MAX_RAW_BYTES / 16, (i + 1) * MAX_RAW_BYTES / 16) }));
    let t0 = process.hrtime.bigint();
    const bufs = small.flatMap((b) => encodeBatch(b, { compress }));
    const enc = gbps(MAX_RAW_BYTES, t0);
    const chunks = split(Buffer.concat(bufs));
    const d = new BatchDecoder();
    t0 = process.hrtime.bigint();
    let count = 0;
    for (const c of chunks) count += d.push(c).length;
    assert.equal(count, 16);
    lines.push(`# 16 x 4 MiB ${compress ? 'lz4 synthetic' : 'raw'}: encode ${enc} GB/s${compress ? '' : ' (header only)'}, decode from 64 KiB chunks ${gbps(MAX_RAW_BYTES, t0)} GB/s`);
  }
  // Parallel: 4 x 16 MiB compressed at once on the thread pool.
  const quarter = (i: number): PageBatch => ({ pid: 42, round: 1, ranges: [{ vaddr: i * 2 ** 30, nrPages: n / 4 }], data: content.subarray(i * MAX_RAW_BYTES / 4, (i + 1) * MAX_RAW_BYTES / 4) });
  const t0 = process.hrtime.bigint();
  await Promise.all([0, 1, 2, 3].map((i) => encodeBatchAsync(quarter(i), { compress: true })));
  lines.push(`# 64 MiB lz4 as 4 x encodeBatchAsync in parallel: ${gbps(MAX_RAW_BYTES, t0)} GB/s (${os.availableParallelism()} cores)`);
  for (const l of lines) process.stdout.write(`${l}\n`);
}

main().catch((err) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
