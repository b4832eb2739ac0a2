// The switchover's lazy dump (src/criu/lazy-dump.ts) with real CRIU: started
// ahead, it waits at its gate (its log FIFO) without freezing anything; freeze()
// opens the gate and sees the tree stopped; a rollback at either point leaves
// the workload running and intact, with no CRIU left behind and its log a plain file.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LazyDump } from '../src/criu/lazy-dump';
import { procState } from '../src/agent/process-tree';
import { startMemWorkload } from '../src/testing/workload';
import { sleep } from '../src/testing/proc';

const root = process.getuid?.() === 0;
const skip = root ? false : 'needs root (CRIU)';

/** Processes whose command line or environment mentions `needle` (zombies aside): CRIU names the
 *  images directory in its arguments. */
function processesWith(needle: string): number[] {
  const has = (p: number, f: string) => { try { return fs.readFileSync(`/proc/${p}/${f}`, 'utf8').includes(needle); } catch { return false; } };
  return fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p)).map(Number)
    .filter((p) => p !== process.pid && (has(p, 'cmdline') || has(p, 'environ')) && procState(p) !== 'Z');
}

const running = (pid: number) => ['R', 'S', 'D'].includes(procState(pid) ?? '');

for (const when of ['at the gate', 'after the freeze'] as const) {
  test(`lazy dump: a rollback ${when} leaves the workload running and intact, and no CRIU behind`, { skip, timeout: 120_000 }, async () => {
    const w = await startMemWorkload({ mib: 16, writeMBps: 5 });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'phaul-test-lazydump-'));
    let dump: LazyDump | undefined;
    try {
      dump = new LazyDump({ pid: w.pid, imagesDir: dir, headerSize: 32 });
      // Long enough for CRIU to start and reach its gate; it must not freeze the tree meanwhile.
      await sleep(1500);
      assert.ok(running(w.pid), `the workload runs while CRIU waits at its gate (state ${procState(w.pid)})`);
      assert.equal(dump.frozenAt, 0);
      if (when === 'after the freeze') {
        await dump.freeze();
        assert.ok(dump.frozenAt > 0);
        assert.ok(['t', 'T'].includes(procState(w.pid) ?? ''), `frozen by CRIU (state ${procState(w.pid)})`);
        await dump.ready;
        // The dump's CPU, from CRIU's own process and the frozen tree (its parasite), is measured
        // whenever the freeze was seen before the images were ready (a 1 ms poll against a dump
        // of tens of ms: practically always).
        if (dump.frozenAt < dump.readyAt) {
          assert.ok(dump.dumpCpu, 'dumpCpu is set once the images are ready');
          assert.ok(dump.dumpCpu.criuMs > 0 && dump.dumpCpu.criuMs < 60_000, `criu on CPU ${dump.dumpCpu.criuMs} ms`);
          assert.ok(dump.dumpCpu.parasiteMs >= 0 && dump.dumpCpu.parasiteMs < 60_000, `parasite ${dump.dumpCpu.parasiteMs} ms`);
        }
      }
      await dump.rollback();
      const code = await dump.exited;
      assert.notEqual(code, 0, 'CRIU did not complete a dump');
      await sleep(100);
      assert.ok(running(w.pid), `the workload runs again (state ${procState(w.pid)})`);
      const rep = await w.report();
      assert.equal(rep.ok, true, JSON.stringify(rep));
      assert.equal(rep.badPages, 0);
      assert.deepEqual(processesWith(dir), [], 'no CRIU is left');
      assert.ok(fs.lstatSync(path.join(dir, 'dump.log')).isFile(), 'the log FIFO became a plain file');
    } finally {
      await dump?.rollback();
      await w.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}
