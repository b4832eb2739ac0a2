// A tree that forks every 20 ms, moved in pre-copy modes: children
// forked between the last live scan and CRIU's freeze cannot be tracked (CRIU
// holds them under ptrace); their memory is read whole in the final round
// (src/memory/frozen-snapshot.ts) and they carry on at the destination, each
// checking its own pages (test/workloads/forkwork.c). A container with the
// same workload: test/migrate-container.test.ts.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { startInPidNamespace } from '../src/testing/workload';
import { isAlive, sleep, waitGone } from '../src/testing/proc';
import { PACKAGE_ROOT } from '../src/package-root';
import { runCli, useTwoHostsWithServe } from './helpers/agents';
import { forkReport } from './helpers/fork-report';

const root = process.getuid?.() === 0;
const skip = root ? false : 'needs root (CRIU, ptrace, userfaultfd, network namespaces)';
const fx = useTwoHostsWithServe({ prefix: 'pffork', tag: 'fork-late', enabled: root });

for (const mode of ['precopy', 'hybrid']) {
  test(`${mode}: children forked after the last live scan come along with their memory`, { skip }, async () => {
    const report = path.join(fx.dir, `fork-${mode}.json`);
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
        '--token-file', fx.token, '--mode', mode, '--json', '--freeze-timeout', '120'], 300_000);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.json!.mode, mode);
      assert.match(r.stderr, /appeared after the last live scan/, 'a child was forked between the last scan and the freeze');
      restored = r.json!.restoredPid;
      assert.ok(await waitGone(pid, 5000));
      const first = await forkReport(restored, report);
      // Every child alive at the freeze finishes its checks (~1 s) at the destination.
      await sleep(2000);
      const after = await forkReport(restored, report);
      assert.equal(after.bad, 0, JSON.stringify(after));
      assert.ok(after.children > first.children, 'it keeps forking at the destination');
    } finally {
      for (const p of [pid, restored, ns.child.pid ?? -1]) if (p > 0 && isAlive(p)) process.kill(p, 'SIGKILL');
    }
  });
}
