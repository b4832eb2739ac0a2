// runc containers moved between two test hosts (network namespaces), with
// real runc, CRIU and the project's static workloads inside a busybox rootfs.
// Each host has its own runc --root, bundle directory and cgroup parent; the
// destination's runc must own the result, and the source's must forget it.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { isAlive, procState, runCmd } from '../src/testing/proc';
import { ExitCode } from '../src/errors';
import {
  containerMemReport, makeBundle, removeContainer, runContainer, runcState, waitMemReady,
} from '../src/testing/container';
import { findRunc } from '../src/container/runc';
import { runCli, writeToken } from './helpers/agents';
import { containerSkip, useContainerHosts } from './helpers/container-hosts';
import { forkReport, holdBeforeFreeze, lateProcesses } from './helpers/fork-report';

const skip = containerSkip;
const fx = useContainerHosts('pfctr');

interface Started {
  id: string;
  bundle: string;
  pid: number;
  report: string;
}

/** A container on host a running memwork (MiB, MB/s) as its init, ready (memory filled). */
async function startMemContainer(mib: number, mbps: number, extra: { memoryLimit?: number; pidsLimit?: number } = {}): Promise<Started> {
  const id = `ctr-${crypto.randomBytes(3).toString('hex')}`;
  const bundle = await makeBundle({
    dir: path.join(fx.dir, 'bundles-a', id), cgroupsPath: `/${fx.cgA}/${id}`, workloads: ['memwork'],
    args: ['/bin/memwork', '--mib', String(mib), '--report', '/report.json', '--write-mbps', String(mbps)], ...extra,
  });
  const pid = await runContainer(fx.rootA, bundle, id, fx.hosts.a.netnsPath);
  const report = path.join(bundle, 'rootfs', 'report.json');
  await waitMemReady(pid, report, 30_000 + mib * 20);
  return { id, bundle, pid, report };
}

async function cleanup(c: Started): Promise<void> {
  await removeContainer(fx.rootA, c.id);
  await removeContainer(fx.rootB, c.id);
}

function migrate(id: string, extra: string[] = [], tok = fx.token): string[] {
  return ['migrate', '--container', id, '--runtime-root', fx.rootA, '--to', `${fx.hosts.b.addr}:${fx.serve.port}`,
    '--token-file', tok, '--json', ...extra];
}

async function expectUntouched(c: Started): Promise<void> {
  const st = await runcState(fx.rootA, c.id);
  assert.equal(st?.status, 'running', 'the source\'s runc still runs it');
  assert.equal(st?.pid, c.pid);
  assert.ok(isAlive(c.pid));
  assert.notEqual(procState(c.pid), 'T', 'not left stopped');
  const r = await containerMemReport(c.pid, c.report);
  assert.equal(r.ok, true);
  assert.equal(r.badPages, 0);
  assert.equal(await runcState(fx.rootB, c.id), null, 'the destination\'s runc has no such container');
  assert.ok(!fs.existsSync(path.join(fx.bundlesB, c.id)), 'the destination removed the bundle it made');
}

test('a 256 MiB container moves in the default mode; the destination\'s runc owns it and every page verifies', { skip }, async () => {
  const c = await startMemContainer(256, 20, { memoryLimit: 512 << 20, pidsLimit: 64 });
  try {
    const before = await containerMemReport(c.pid, c.report);
    const r = await runCli(fx.hosts.a, migrate(c.id), 180_000);
    assert.equal(r.code, 0, r.stderr);
    const rep = r.json!;
    assert.equal(rep.ok, true);
    assert.equal(rep.mode, 'hybrid', 'auto picks hybrid here');
    assert.deepEqual(rep.container, { id: c.id, runtime: 'runc', bundle: path.join(fx.bundlesB, c.id) });

    const dst = await runcState(fx.rootB, c.id);
    assert.equal(dst?.status, 'running');
    assert.equal(dst?.pid, rep.restoredPid);
    assert.notEqual(dst?.bundle, c.bundle, 'the destination has a bundle of its own');
    assert.equal(await runcState(fx.rootA, c.id), null, 'the source\'s runc forgot it');
    assert.ok(!isAlive(c.pid), 'the original is gone');

    const after = await containerMemReport(dst!.pid, path.join(dst!.bundle, 'rootfs', 'report.json'), 60_000);
    assert.equal(after.ok, true, JSON.stringify(after));
    assert.equal(after.pages, 256 * 256);
    assert.equal(after.badPages, 0);
    assert.ok(after.iterations > before.iterations, 'it kept running from where it was');

    // Its own cgroup, with the limits of its config.json.
    const cg = fs.readFileSync(`/proc/${dst!.pid}/cgroup`, 'utf8');
    assert.match(cg, new RegExp(`memory:/${fx.cgB}/${c.id}\\n`), cg);
    assert.equal(Number(fs.readFileSync(`/sys/fs/cgroup/memory/${fx.cgB}/${c.id}/memory.limit_in_bytes`, 'utf8')), 512 << 20);
    assert.equal(fs.readFileSync(`/sys/fs/cgroup/pids/${fx.cgB}/${c.id}/pids.max`, 'utf8').trim(), '64');

    // A masked directory is still empty and read-only (bound from an empty directory, not a tmpfs CRIU archived).
    const masked = fs.readFileSync(`/proc/${dst!.pid}/mountinfo`, 'utf8').split('\n').find((l) => l.split(' ')[4] === '/sys/firmware');
    assert.ok(masked, 'the container still has /sys/firmware masked');
    assert.ok(masked.split(' ')[5].split(',').includes('ro'), masked);
    assert.deepEqual(fs.readdirSync(`/proc/${dst!.pid}/root/sys/firmware`), []);

    // runc's own verbs work on it.
    const ex = await runCmd([findRunc()!, '--root', fx.rootB, 'exec', c.id, '/bin/cat', '/proc/1/comm'], { timeoutMs: 20_000 });
    assert.equal(ex.code, 0, ex.stderr);
    assert.equal(ex.stdout.trim(), 'memwork');
    const kill = await runCmd([findRunc()!, '--root', fx.rootB, 'kill', c.id, 'KILL'], { timeoutMs: 20_000 });
    assert.equal(kill.code, 0, kill.stderr);
    for (let i = 0; i < 100 && (await runcState(fx.rootB, c.id))?.status !== 'stopped'; i++) await new Promise((res) => setTimeout(res, 50));
    const del = await runCmd([findRunc()!, '--root', fx.rootB, 'delete', c.id], { timeoutMs: 20_000 });
    assert.equal(del.code, 0, del.stderr);
    assert.equal(await runcState(fx.rootB, c.id), null);
  } finally {
    await cleanup(c);
  }
});

for (const mode of ['stop-copy', 'precopy']) {
  test(`a container moves in ${mode} mode`, { skip }, async () => {
    const c = await startMemContainer(64, 10);
    try {
      const r = await runCli(fx.hosts.a, migrate(c.id, ['--mode', mode]), 120_000);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.json!.mode, mode);
      const dst = await runcState(fx.rootB, c.id);
      assert.equal(dst?.status, 'running');
      assert.equal(await runcState(fx.rootA, c.id), null);
      const after = await containerMemReport(dst!.pid, path.join(dst!.bundle, 'rootfs', 'report.json'));
      assert.equal(after.ok, true);
      assert.equal(after.badPages, 0);
    } finally {
      await cleanup(c);
    }
  });
}

test('a migration refused for a wrong token leaves the container running and intact at the source', { skip }, async () => {
  const c = await startMemContainer(64, 10);
  try {
    const bad = writeToken(fx.dir);
    const r = await runCli(fx.hosts.a, migrate(c.id, [], bad));
    assert.equal(r.code, ExitCode.auth, r.stderr);
    assert.equal(r.json!.rolledBack, true);
    await expectUntouched(c);
  } finally {
    await cleanup(c);
  }
});

test('a container id the destination already has is refused; the source keeps it', { skip }, async () => {
  const c = await startMemContainer(32, 0);
  const other = await makeBundle({ dir: path.join(fx.dir, 'bundles-other', c.id), cgroupsPath: `/${fx.cgB}/other-${c.id}`, args: ['/bin/sleep', '1000'] });
  try {
    await runContainer(fx.rootB, other, c.id, fx.hosts.b.netnsPath);
    const r = await runCli(fx.hosts.a, migrate(c.id, ['--mode', 'stop-copy']));
    assert.equal(r.code, ExitCode.failed, r.stderr);
    assert.match(r.json!.error.message, /already exists/);
    assert.equal(r.json!.rolledBack, true);
    const st = await runcState(fx.rootA, c.id);
    assert.equal(st?.status, 'running');
    assert.equal((await runcState(fx.rootB, c.id))?.bundle, other, 'the destination\'s own container is untouched');
  } finally {
    await cleanup(c);
  }
});

test('a container with a terminal is refused before anything is touched', { skip }, async () => {
  const id = `ctr-${crypto.randomBytes(3).toString('hex')}`;
  const bundle = await makeBundle({ dir: path.join(fx.dir, 'bundles-a', id), cgroupsPath: `/${fx.cgA}/${id}`, args: ['/bin/sleep', '1000'] });
  const cfg = JSON.parse(fs.readFileSync(path.join(bundle, 'config.json'), 'utf8'));
  const c: Started = { id, bundle, pid: 0, report: '' };
  try {
    c.pid = await runContainer(fx.rootA, bundle, id, fx.hosts.a.netnsPath);
    // The config says terminal only after the start (runc run -d with a terminal needs a console socket).
    cfg.process.terminal = true;
    fs.writeFileSync(path.join(bundle, 'config.json'), JSON.stringify(cfg));
    const r = await runCli(fx.hosts.a, migrate(id));
    assert.equal(r.code, ExitCode.usage, r.stderr);
    assert.match(r.stderr, /terminal/);
    assert.equal((await runcState(fx.rootA, id))?.status, 'running');
  } finally {
    await cleanup(c);
  }
});

test('--shared-fs and --shared-path: the rootfs and a shared volume stay where they are, another volume moves', { skip }, async () => {
  const id = `ctr-${crypto.randomBytes(3).toString('hex')}`;
  const shared = path.join(fx.dir, `shared-${id}`);
  const sharedVol = path.join(shared, 'vol');
  const ownVol = path.join(fx.dir, `own-${id}`);
  for (const d of [sharedVol, ownVol]) fs.mkdirSync(d, { recursive: true });
  fs.writeFileSync(path.join(sharedVol, 'x'), 'shared\n');
  fs.writeFileSync(path.join(ownVol, 'y'), 'own\n');
  const bind = (source: string, destination: string) => ({ destination, type: 'bind', source, options: ['rbind', 'rw'] });
  const bundle = await makeBundle({
    dir: path.join(fx.dir, 'bundles-a', id), cgroupsPath: `/${fx.cgA}/${id}`, args: ['/bin/sleep', '1000'],
    mounts: [bind(sharedVol, '/shared'), bind(ownVol, '/own')],
  });
  const c: Started = { id, bundle, pid: 0, report: '' };
  try {
    c.pid = await runContainer(fx.rootA, bundle, id, fx.hosts.a.netnsPath);
    const r = await runCli(fx.hosts.a, migrate(id, ['--shared-fs', '--shared-path', `${shared},/nonexistent`]), 120_000);
    assert.equal(r.code, 0, r.stderr);
    const dst = await runcState(fx.rootB, id);
    assert.equal(dst?.status, 'running');
    assert.equal(dst?.bundle, path.join(fx.bundlesB, id));
    assert.equal(await runcState(fx.rootA, id), null);
    // Not copied: no rootfs in the destination's bundle, which names the source's; the shared volume is the same directory.
    assert.ok(!fs.existsSync(path.join(dst!.bundle, 'rootfs')), 'the rootfs was not copied');
    const cfg = JSON.parse(fs.readFileSync(path.join(dst!.bundle, 'config.json'), 'utf8'));
    assert.equal(cfg.root.path, path.join(bundle, 'rootfs'));
    const mountOf = (d: string) => cfg.mounts.find((m: { destination: string }) => m.destination === d);
    assert.equal(mountOf('/shared').source, sharedVol);
    const moved = mountOf('/own').source;
    assert.ok(moved.startsWith(path.join(dst!.bundle, 'volumes') + path.sep), moved);
    assert.equal(fs.readFileSync(path.join(moved, 'y'), 'utf8'), 'own\n', 'the other volume was copied');
    assert.equal(fs.readdirSync(path.join(dst!.bundle, 'volumes')).length, 1, 'only the volume that is not shared');
    // The restored container sees all three where CRIU was told they are.
    const sameFile = (a: string, b: string) => fs.statSync(a).ino === fs.statSync(b).ino && fs.statSync(a).dev === fs.statSync(b).dev;
    assert.ok(sameFile(`/proc/${dst!.pid}/root/bin/busybox`, path.join(bundle, 'rootfs', 'bin', 'busybox')), 'runs from the shared rootfs');
    assert.ok(sameFile(`/proc/${dst!.pid}/root/shared/x`, path.join(sharedVol, 'x')), 'the shared volume is mounted from its own path');
    assert.ok(sameFile(`/proc/${dst!.pid}/root/own/y`, path.join(moved, 'y')), 'the moved volume from the destination\'s copy');
  } finally {
    await cleanup(c);
  }
});

test('a container whose init forks every 20 ms moves in the default mode; children forked after the last live scan keep their memory', { skip }, async () => {
  const id = `ctr-${crypto.randomBytes(3).toString('hex')}`;
  const bundle = await makeBundle({ dir: path.join(fx.dir, 'bundles-a', id), cgroupsPath: `/${fx.cgA}/${id}`, workloads: ['forkwork'],
    args: ['/bin/forkwork', '/report.json'] });
  const c: Started = { id, bundle, pid: 0, report: path.join(bundle, 'rootfs', 'report.json') };
  try {
    c.pid = await runContainer(fx.rootA, bundle, id, fx.hosts.a.netnsPath);
    await new Promise((res) => setTimeout(res, 300));
    const r = await runCli(fx.hosts.a, migrate(id), 300_000, holdBeforeFreeze(path.join(fx.dir, `release-${id}`)));
    assert.equal(r.code, 0, r.stderr);
    assert.ok(lateProcesses(r.stderr) > 0, `children were forked between the last scan and the freeze: ${r.stderr}`);
    const dst = await runcState(fx.rootB, id);
    assert.equal(dst?.status, 'running');
    const report = path.join(dst!.bundle, 'rootfs', 'report.json');
    const first = await forkReport(dst!.pid, report);
    await new Promise((res) => setTimeout(res, 2000)); // every child alive at the freeze finishes its checks
    const after = await forkReport(dst!.pid, report);
    assert.equal(after.bad, 0, JSON.stringify(after));
    assert.ok(after.children > first.children, 'it keeps forking at the destination');
  } finally {
    await cleanup(c);
  }
});
