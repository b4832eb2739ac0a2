// The lazy-pages server (native/lazy_fill.cc) against a real process's own
// userfaultfd: test/workloads/fillrace hands its memory over the way
// `criu restore --lazy-pages` does, then faults, zaps (MADV_DONTNEED) and
// forks from several threads while the server fills it, checking every page.
// Only CRIU is left out (it has its own tests: migrate-precopy's hybrid and
// migrate-postcopy); the faults, copies and events are the kernel's.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { addon } from '../src/native';
import type { FillStats } from '../src/native/lazy-fill';
import { PACKAGE_ROOT } from '../src/package-root';

const root = process.getuid?.() === 0;
const skip = root ? false : 'needs root (userfaultfd with fork and remove events)';
const bin = path.join(PACKAGE_ROOT, 'build', 'workloads', 'fillrace');

interface Report { ok: boolean; bad: number; firstBad: number; checked: number; zaps: number; forks: number; childBad: number }

async function race(pages: number, opts: { threads?: number; sliceBytes?: number; faultBytes?: number; readers: number }):
Promise<{ report: Report; stats: FillStats; stderr: string }> {
  const dir = fs.mkdtempSync('/dev/shm/pf-fillrace-');
  try {
    const file = path.join(dir, 'pages');
    const made = spawnSync(bin, ['data', file, String(pages)], { encoding: 'utf8', maxBuffer: 64 << 20 });
    assert.equal(made.status, 0, made.stderr);
    const layout = JSON.parse(made.stdout) as { extents: [number, number, number][] };
    const extents = new Float64Array(layout.extents.flatMap(([s, e, off]) => [s, e, 0, off]));
    const sock = path.join(dir, 'lazy.sock');
    const listenFd = addon().lazyFillListen(sock);
    const serving = addon().lazyFillServe({ listenFd, files: [file], images: [{ id: 1, extents }], connectTimeoutMs: 30_000,
      ...(opts.threads ? { threads: opts.threads } : {}), ...(opts.sliceBytes ? { sliceBytes: opts.sliceBytes } : {}),
      ...(opts.faultBytes ? { faultBytes: opts.faultBytes } : {}) });
    const reportFile = path.join(dir, 'report.json');
    const child = spawn(bin, ['run', sock, String(pages), String(opts.readers), reportFile], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    let stats: FillStats;
    try {
      stats = await serving;
    } catch (e) {
      child.kill('SIGKILL'); // the server failed: the process must not run on (its faults would never be answered)
      await exited;
      throw e;
    }
    assert.equal(await exited, 0, stderr);
    return { report: JSON.parse(fs.readFileSync(reportFile, 'utf8')) as Report, stats, stderr };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test('faults racing the background fill, zaps and forks: every page reads its data, zeros where zapped or never held', { skip },
  async () => {
    // 96 MiB: the fill takes long enough for the readers' faults to land on
    // pages the background threads hold (claimed, or in an ioctl under way).
    // A fault read in one batch with a fork is what the server before this
    // test got wrong: it copied the fault's window into the parent before it
    // took the child's share (and gave the store's pages back), so the child
    // read zeros there.
    for (const o of [{ readers: 4 }, { readers: 4, sliceBytes: 64 << 10, threads: 3 }, { readers: 2, faultBytes: 4096 }, { readers: 4 }]) {
      const { report, stats, stderr } = await race(24576, o);
      assert.equal(report.bad, 0, `bad pages (first ${report.firstBad}) with ${JSON.stringify(o)}: ${JSON.stringify(stats)}`);
      assert.equal(report.childBad, 0, `a forked child read a bad page: ${stderr}`);
      assert.equal(report.forks, 4);
      assert.ok(report.zaps > 0 && report.checked > 24576, JSON.stringify(report));
      // Every page the images hold was placed or dropped (zapped before it was).
      assert.ok(stats.copiedPages + stats.droppedPages >= stats.pages, JSON.stringify(stats));
      // The first fork comes at once, so its event reaches the server; later ones may come after the fill.
      assert.ok(stats.faults > 0 && stats.forks >= 1, JSON.stringify(stats));
      process.stderr.write(`fillrace ${JSON.stringify(o)}: faults ${stats.faults} (zero ${stats.zeroFaults}, joined a copy under way ` +
        `${stats.joinedFaults}), p50 ${stats.faultUs.p50} us, max ${stats.faultUs.max} us; reads waited ${stats.gateWaitUsTotal} us in all, ` +
        `max ${stats.gateWaitUsMax}; fill ${stats.fillMs} ms\n`);
    }
  });
