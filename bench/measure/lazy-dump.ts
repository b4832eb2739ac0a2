// What CRIU's lazy dump costs per resident GiB, CRIU against CRIU: the
// switchover's LazyDump (src/criu/lazy-dump.ts) of memwork, frozen, its CPU
// from the freeze to the images (CRIU's process and the frozen tree, where its
// parasite runs) and its wall time, then a rollback. With several CRIU
// binaries (e.g. one built without setup's patches) the runs alternate, so
// the load of the host hits them alike. Prints; asserts only that the
// workload verifies after the last rollback. Needs root.
//
//   node dist/bench/measure/lazy-dump.js [--mib 256,4096] [--runs 3] [--criu BIN]...
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LazyDump } from '../../src/criu/lazy-dump';
import { criuBinary } from '../../src/criu/binary';
import { startMemWorkload } from '../../src/testing/workload';
import { sleep } from '../../src/testing/proc';

function args(): { mibs: number[]; runs: number; crius: string[] } {
  const a = process.argv.slice(2);
  let mibs = [256, 4096];
  let runs = 3;
  const crius: string[] = [];
  for (let i = 0; i < a.length; i += 2) {
    const v = a[i + 1];
    if (a[i] === '--mib' && v) mibs = v.split(',').map(Number);
    else if (a[i] === '--runs' && v) runs = Number(v);
    else if (a[i] === '--criu' && v) crius.push(v);
    else throw new Error(`usage: lazy-dump.js [--mib 256,4096] [--runs 3] [--criu BIN]... (not ${a[i]})`);
  }
  if (!mibs.every((m) => m > 0) || !(runs > 0)) throw new Error('--mib and --runs take positive numbers');
  return { mibs, runs, crius: crius.length ? crius : [criuBinary()] };
}

async function main(): Promise<void> {
  const { mibs, runs, crius } = args();
  console.log(`load ${os.loadavg()[0].toFixed(1)}; per run: wall ms freeze -> images, CPU ms of CRIU + of the frozen tree`);
  for (const mib of mibs) {
    const w = await startMemWorkload({ mib, writeMBps: 20 });
    try {
      const seen = new Map<string, string[]>(crius.map((c) => [c, []]));
      for (let r = 0; r < runs; r++) {
        for (const criu of r % 2 ? [...crius].reverse() : crius) {
          const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'phaul-measure-lazydump-'));
          const dump = new LazyDump({ pid: w.pid, imagesDir: dir, headerSize: 32, criu });
          try {
            await sleep(500); // CRIU reaches its gate
            await dump.freeze();
            await dump.ready;
            const cpu = dump.dumpCpu;
            seen.get(criu)!.push(`${dump.readyAt - dump.frozenAt} (${cpu ? `${cpu.criuMs}+${cpu.parasiteMs}` : '?'})`);
          } finally {
            await dump.rollback();
            await dump.exited;
            fs.rmSync(dir, { recursive: true, force: true });
          }
          await sleep(300);
        }
      }
      for (const [criu, s] of seen) console.log(`${mib} MiB  ${criu}: ${s.join('  ')}`);
      const rep = await w.report();
      assert.equal(rep.ok, true, JSON.stringify(rep));
    } finally {
      await w.stop();
    }
  }
}

main().catch((e) => { console.error(e instanceof Error ? e.message : e); process.exit(1); });
