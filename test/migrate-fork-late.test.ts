// A tree that forks every 20 ms and whose children exit after ~0.3 s
// (test/workloads/forkwork.c), moved in the pre-copy modes. Processes appear
// and go during every round (a child gone between its scan and the read of its
// pages is skipped), and the source is held for 400 ms between its last live
// scan and CRIU's freeze (the test-only pause hook, src/agent/test-pause.ts),
// so that at the freeze the tree surely holds children no round ever saw: no
// tracker can be given to them under CRIU's ptrace, and their memory is what
// CRIU's images list for them, read in the final round. Every child alive at
// the freeze checks, at the destination, its own pages and the parent's pages
// it inherited; the parent counts each child that failed or died.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { startInPidNamespace } from '../src/testing/workload';
import { isAlive, sleep, waitGone } from '../src/testing/proc';
import { PACKAGE_ROOT } from '../src/package-root';
import { runCli, useTwoHostsWithServe } from './helpers/agents';
import { forkReport, holdBeforeFreeze, lateProcesses } from './helpers/fork-report';

const root = process.getuid?.() === 0;
const skip = root ? false : 'needs root (CRIU, ptrace, userfaultfd, network namespaces)';
const fx = useTwoHostsWithServe({ prefix: 'pffork', tag: 'fork-late', enabled: root });

for (const mode of ['precopy', 'hybrid']) {
  test(`${mode}: children forked after the last live scan come along with their memory, children gone are not expected`, { skip }, async (t) => {
    const report = path.join(fx.dir, `fork-${mode}.json`);
    const release = path.join(fx.dir, `release-${mode}`);
    const ns = startInPidNamespace([path.join(PACKAGE_ROOT, 'build', 'workloads', 'forkwork'), report],
      { netns: fx.hosts.a.netnsPath!, stderr: 'ignore' });
    let pid = -1;
    let restored = 0;
    try {
      const end = Date.now() + 10_000;
      while ((pid = ns.initPid()) < 0 || !fs.existsSync(report)) {
        assert.ok(Date.now() < end, `forkwork did not start: ${ns.stderr()}`);
        await sleep(20);
      }
      await sleep(300);
      const r = await runCli(fx.hosts.a, ['migrate', '--pid', String(pid), '--to', `${fx.hosts.b.addr}:${fx.serve.port}`,
        '--token-file', fx.token, '--mode', mode, '--json'], 300_000, holdBeforeFreeze(release));
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.json!.mode, mode);
      assert.ok(lateProcesses(r.stderr) > 0, `children were forked between the last scan and the freeze: ${r.stderr}`);
      // What the pause held, for the record (timings are not asserted).
      for (const line of r.stderr.split('\n')) if (/appeared after|final-(scan|pages|stored)|criu-dump \d/.test(line)) t.diagnostic(line.trim());
      restored = r.json!.restoredPid;
      assert.ok(await waitGone(pid, 5000));
      try {
        const first = await forkReport(restored, report);
        // Every child alive at the freeze finishes its checks (~0.3 s) at the destination.
        await sleep(1500);
        const after = await forkReport(restored, report);
        assert.equal(after.bad, 0, JSON.stringify(after));
        assert.ok(after.children > first.children, 'it keeps forking at the destination');
      } catch (e) {
        const tail = fx.serve.stderr().trim().split('\n').slice(-25).join('\n');
        throw new Error(`${(e as Error).message}\nmigrate:\n${r.stderr}\nserve (last lines):\n${tail}`);
      }
    } finally {
      for (const p of [pid, restored, ns.child.pid ?? -1]) if (p > 0 && isAlive(p)) process.kill(p, 'SIGKILL');
      fs.rmSync(release, { force: true });
    }
  });
}
