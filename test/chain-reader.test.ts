// The page store's parent-image chain as another process reads it
// (src/store/chain-reader.ts, what the hybrid fill's plan locates pages in):
// the same pages as the store itself holds, across levels, and nothing past
// the layout or of an unknown image.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PageStore, defaultStoreRoot } from '../src/store/page-store';
import { ChainReader } from '../src/store/chain-reader';
import { PAGE_SIZE as P } from '../src/util/page-size';

async function withStore(fn: (s: PageStore) => Promise<void>): Promise<void> {
  const dir = fs.mkdtempSync(path.join(defaultStoreRoot(1 << 30), 'phaul-chain-test-'));
  const s = new PageStore(path.join(dir, 's'));
  try {
    await fn(s);
  } finally {
    await s.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Image id 1: 0x10000-0x13fff on level 0, 0x40000 added later (level 1). */
async function fill(s: PageStore): Promise<void> {
  s.setLayout(1, [{ vaddr: 0x10000, nrPages: 4 }]);
  await s.write({ pid: 1, round: 0, ranges: [{ vaddr: 0x10000, nrPages: 4 }],
    data: Buffer.concat([0, 1, 2, 3].map((i) => Buffer.alloc(P, 0x10 + i))) });
  s.setLayout(1, [{ vaddr: 0x40000, nrPages: 1 }]);
  await s.write({ pid: 1, round: 1, ranges: [{ vaddr: 0x40000, nrPages: 1 }], data: Buffer.alloc(P, 0x40) });
  await s.write({ pid: 1, round: 2, ranges: [{ vaddr: 0x11000, nrPages: 1, zero: true }], data: Buffer.alloc(0) });
  await s.finalizeParent();
}

test('the chain the store writes reads back the same pages, in another process\'s view (ChainReader)', async () => {
  await withStore(async (s) => {
    await fill(s);
    const top = s.writeChain(new Map([[1, 1]]));
    const chain = new ChainReader(top);
    try {
      for (const [page, n] of [[0x10, 4], [0x40, 1], [0x11, 2]]) {
        assert.equal(chain.firstMissing(1, page, n), -1);
        const a = Buffer.alloc(n * P), b = Buffer.alloc(n * P, 0xee);
        s.readPages(1, page, n, a);
        chain.readPages(1, page, n, b);
        assert.deepEqual(b, a, `pages 0x${page.toString(16)}+${n}`);
      }
      assert.equal(chain.firstMissing(1, 0x13, 2), 0x14, 'past the layout');
      assert.equal(chain.firstMissing(2, 0x10, 1), 0x10, 'unknown image');
    } finally {
      chain.close();
    }
  });
});
