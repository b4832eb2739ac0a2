// The decoders of what peers send, under fuzzing: every saved finding of
// scripts/fuzz.sh replays as a regression, and each TypeScript decoder gets a
// short fuzz run here (the long runs: `bash scripts/fuzz.sh 600`,
// docs/SECURITY.md). The native page server replays its seeds and findings
// through the real addon, over a socketpair.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { fuzz, fuzzOne, seeds, TARGETS } from './fuzz/fuzz-decoders';
import { PACKAGE_ROOT } from '../src/package-root';
import { PageServer, streamSocketPair } from '../src/transport/page-server';
import { PhaulError } from '../src/errors';
import { tempDir } from './helpers/agents';

function inputs(dir: string): string[] {
  try {
    return fs.readdirSync(dir).map((f) => path.join(dir, f));
  } catch {
    return [];
  }
}

for (const target of TARGETS) {
  test(`${target}: valid seeds decode, saved findings are refused cleanly, and 3 s of fuzzing finds nothing`, async () => {
    for (const s of seeds(target)) await fuzzOne(target, s);
    for (const f of inputs(path.join(PACKAGE_ROOT, 'test', 'fixtures', 'fuzz', target))) await fuzzOne(target, fs.readFileSync(f));
    const n = await fuzz(target, 3000, path.join(PACKAGE_ROOT, '.cache', 'fuzz'), 12345);
    assert.ok(n > 0, 'inputs ran');
  });
}

/** Runs the native page server on one end of a socketpair, the input written into the other. */
async function servePages(input: Buffer, dir: string) {
  const [mine, theirs] = streamSocketPair();
  const server = PageServer.start(theirs, dir, { headerSize: input[0] & 1 ? 32 : 24, idleTimeoutMs: 5000, maxBytes: 64 << 20 });
  const peer = new net.Socket({ fd: mine, readable: true, writable: true });
  peer.on('error', () => undefined);
  peer.resume(); // replies are not checked here
  peer.end(input.subarray(1));
  try {
    return await server.done;
  } finally {
    peer.destroy();
  }
}

test('page server: the fuzzer\'s seeds are served whole, its findings refused with a PhaulError', async () => {
  const dir = tempDir('fuzz-ps');
  try {
    for (const f of inputs(path.join(PACKAGE_ROOT, 'native', 'fuzz', 'seeds-page-server'))) {
      const st = await servePages(fs.readFileSync(f), dir);
      assert.equal(st.pages, 4, `${f}: ${JSON.stringify(st)}`);
      for (const x of fs.readdirSync(dir)) fs.rmSync(path.join(dir, x));
    }
    for (const f of inputs(path.join(PACKAGE_ROOT, 'native', 'fuzz', 'regressions'))) {
      await servePages(fs.readFileSync(f), dir).catch((e) => assert.ok(e instanceof PhaulError, `${f}: ${e}`));
      for (const x of fs.readdirSync(dir)) fs.rmSync(path.join(dir, x));
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
