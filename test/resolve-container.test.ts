// `phaul-fast resolve` for a runc container (issue 13): migrate is SIGKILLed
// after it sent `commit`, the destination's copy runs, and resolve, on the
// source host, kills the stopped original and settles the source runtime's
// record too (runc forgets the container), as the end of a migration does.
// Real runc, CRIU and namespaces; the agent is stopped at the point by the
// test-only PHAUL_FAST_TEST_PAUSE hook (src/agent/test-pause.ts).
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as path from 'node:path';
import { isAlive, procState, sleep } from '../src/testing/proc';
import { spawnIn } from '../src/testing/hosts';
import { containerMemReport, makeBundle, removeContainer, runContainer, runcState, waitMemReady } from '../src/testing/container';
import { readSourceRecord } from '../src/agent/source-record';
import { CLI, runCli } from './helpers/agents';
import { containerSkip, useContainerHosts } from './helpers/container-hosts';

const skip = containerSkip;
const fx = useContainerHosts('pfrsc');

test('a container whose migrate was killed after commit: resolve kills the original and the source\'s runc forgets it', { skip }, async () => {
  const id = `ctr-${crypto.randomBytes(3).toString('hex')}`;
  const bundle = await makeBundle({
    dir: path.join(fx.dir, 'bundles-a', id), cgroupsPath: `/${fx.cgA}/${id}`, workloads: ['memwork'],
    args: ['/bin/memwork', '--mib', '64', '--report', '/report.json', '--write-mbps', '5'],
  });
  const pid = await runContainer(fx.rootA, bundle, id, fx.hosts.a.netnsPath);
  const report = path.join(bundle, 'rootfs', 'report.json');
  try {
    await waitMemReady(pid, report, 30_000);
    const m = spawnIn(fx.hosts.a, [process.execPath, CLI, 'migrate', '--container', id, '--runtime-root', fx.rootA, '--mode', 'stop-copy',
      '--to', `${fx.hosts.b.addr}:${fx.serve.port}`, '--token-file', fx.token, '--json'],
    { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, PHAUL_FAST_TEST_PAUSE: 'source:committing' } });
    let err = '';
    m.stderr!.on('data', (d) => { err += d; });
    const end = Date.now() + 120_000;
    while (!/test pause: source at committing/.test(err)) {
      assert.ok(Date.now() < end && m.exitCode === null, `never reached the commit: ${err}`);
      await sleep(20);
    }
    const session = /migrate: session ([0-9a-f]{24})/.exec(err)![1];
    m.kill('SIGKILL'); // the migrate we started (CRIU runs in a group of its own)
    await new Promise((r) => m.once('close', r));
    assert.deepEqual(readSourceRecord(session)?.container?.spec.id, id, 'the record names the container');
    assert.equal(procState(pid), 'T', 'the original is left stopped');
    // The destination got the commit (sent before the pause) and resumed its copy.
    const until = Date.now() + 30_000;
    while ((await runcState(fx.rootB, id))?.status !== 'running' && Date.now() < until) await sleep(200);
    const r = await runCli(fx.hosts.a, ['resolve', session, '--token-file', fx.token, '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json?.outcome, 'moved', r.stdout);
    assert.match(r.json?.detail, new RegExp(`the source's runc forgot container ${id}`));
    assert.ok(!isAlive(pid), 'the original is gone');
    assert.equal(await runcState(fx.rootA, id), null, "the source's runc has no such container any more");
    const dst = await runcState(fx.rootB, id);
    assert.equal(dst?.status, 'running', "the destination's runc runs it");
    const rep = await containerMemReport(dst!.pid, path.join(dst!.bundle, 'rootfs', 'report.json'), 60_000);
    assert.equal(rep.ok, true, JSON.stringify(rep));
    assert.equal(rep.badPages, 0);
  } finally {
    await removeContainer(fx.rootA, id);
    await removeContainer(fx.rootB, id);
  }
});
