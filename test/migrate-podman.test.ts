// podman containers moved between two test hosts (network namespaces), with
// real podman (driving runc through conmon), CRIU and the project's static
// memwork in a locally imported image. Each host is a podman state directory
// of its own; both have the image (one id), so only the writable layer moves.
import { after, before, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createTwoHosts, TwoHosts } from '../src/testing/hosts';
import { isAlive, procState } from '../src/testing/proc';
import { ExitCode } from '../src/errors';
import type { Podman } from '../src/container/podman';
import { containerMemReport, removeCgroups, runcAvailable, waitMemReady } from '../src/testing/container';
import { importImage, podmanAvailable, podmanHost, removePodmanHost, runPodmanContainer, shareImage } from '../src/testing/podman';
import { runCli, ServeAgent, startServe, tempDir, writeToken } from './helpers/agents';

const root = process.getuid?.() === 0;
const skip = !root ? 'needs root (podman, runc, CRIU, network namespaces)' : podmanAvailable() ?? runcAvailable() ?? false;

const IMAGE = 'localhost/phaul-test-memwork:1';
const tag = crypto.randomBytes(3).toString('hex');
const cgA = `phaul-test-${tag}-podman-a`;
const cgB = `phaul-test-${tag}-podman-b`;
let hosts: TwoHosts;
let dir = '';
let token = '';
let serve: ServeAgent;
let a: Podman;
let b: Podman;
const stateA = () => path.join(dir, 'podman-a');

before(async () => {
  if (skip) return;
  hosts = await createTwoHosts({ prefix: 'pfpod' });
  dir = tempDir('podman');
  token = writeToken(dir);
  a = podmanHost(stateA());
  b = podmanHost(path.join(dir, 'podman-b'));
  await importImage(a, IMAGE, ['memwork'], dir);
  await shareImage(a, b, IMAGE, dir);
  serve = await startServe(hosts.b, token, path.join(dir, 'dest'),
    ['--podman-root', path.join(dir, 'podman-b'), '--bundles', path.join(dir, 'staging-b'), '--cgroup-parent', cgB]);
});

after(async () => {
  if (skip) return;
  await serve?.stop();
  if (a) await removePodmanHost(a);
  if (b) await removePodmanHost(b);
  await hosts?.destroy();
  removeCgroups(cgA);
  removeCgroups(cgB);
  fs.rmSync(dir, { recursive: true, force: true });
});

interface Started {
  name: string;
  pid: number;
}

/** A podman container on host a whose init is memwork (MiB, MB/s), after writing /data/marker into its writable layer. */
async function startMemContainer(mib: number, mbps: number, image = IMAGE): Promise<Started> {
  const name = `pod-${crypto.randomBytes(3).toString('hex')}`;
  const memwork = ['/bin/memwork', '--mib', String(mib), '--report', '/report.json', '--write-mbps', String(mbps)].join(' ');
  const pid = await runPodmanContainer(a, { name, image, args: ['/bin/sh', '-c', `echo moved > /data/marker && exec ${memwork}`],
    extra: ['--cgroup-parent', `/${cgA}`] });
  await waitMemReady(pid, `/proc/${pid}/root/report.json`, 30_000 + mib * 20);
  return { name, pid };
}

async function cleanup(c: Started): Promise<void> {
  await a.destroy(c.name);
  await b.destroy(c.name);
}

function migrate(name: string, extra: string[] = []): string[] {
  return ['migrate', '--container', name, '--runtime', 'podman', '--runtime-root', stateA(), '--to', `${hosts.b.addr}:${serve.port}`,
    '--token-file', token, '--json', ...extra];
}

async function expectUntouched(c: Started): Promise<void> {
  const st = await a.inspect(c.name);
  assert.equal(st?.status, 'running', 'the source\'s podman still runs it');
  assert.equal(st?.pid, c.pid);
  assert.notEqual(procState(c.pid), 'T', 'not left stopped');
  const r = await containerMemReport(c.pid, `/proc/${c.pid}/root/report.json`);
  assert.equal(r.ok, true);
  assert.equal(r.badPages, 0);
  assert.equal(await b.inspect(c.name), undefined, 'the destination\'s podman has no such container');
}

for (const mode of ['stop-copy', 'auto']) {
  test(`a podman container moves (${mode}); podman ps at the destination lists it, its writable layer moved and no image layer`, { skip }, async () => {
    const c = await startMemContainer(64, 10);
    try {
      const r = await runCli(hosts.a, migrate(c.name, mode === 'auto' ? [] : ['--mode', mode]), 180_000);
      assert.equal(r.code, 0, r.stderr);
      const rep = r.json!;
      assert.equal(rep.ok, true);
      // podman has no lazy restore: the default mode is pre-copy.
      assert.equal(rep.mode, mode === 'auto' ? 'precopy' : mode);
      assert.equal(rep.container.runtime, 'podman');

      const ps = await b.run(['ps', '--format', '{{.Names}} {{.Status}}']);
      assert.match(ps.stdout, new RegExp(`^${c.name} Up `, 'm'), ps.stdout);
      const dst = await b.inspect(c.name);
      assert.equal(dst?.status, 'running');
      assert.equal(dst?.pid, rep.restoredPid);
      assert.equal(await a.inspect(c.name), undefined, 'the source\'s podman removed it');
      assert.ok(!isAlive(c.pid), 'the original is gone');

      const after = await containerMemReport(dst!.pid, `/proc/${dst!.pid}/root/report.json`, 60_000);
      assert.equal(after.ok, true, JSON.stringify(after));
      assert.equal(after.pages, 64 * 256);
      assert.equal(after.badPages, 0);
      assert.equal(fs.readFileSync(`/proc/${dst!.pid}/root/data/marker`, 'utf8'), 'moved\n');
      // The destination's writable layer holds what the source's did, not the image's files.
      assert.ok(fs.existsSync(path.join(dst!.upperDir!, 'data', 'marker')));
      assert.ok(!fs.existsSync(path.join(dst!.upperDir!, 'bin', 'busybox')), 'image layers were not copied into the writable layer');
      // Its cgroup is the destination's own.
      assert.match(fs.readFileSync(`/proc/${dst!.pid}/cgroup`, 'utf8'), new RegExp(`pids:/${cgB}/libpod-${dst!.id}\\n`));
      // podman's own verbs work on it.
      const ex = await b.run(['exec', c.name, '/bin/cat', '/proc/1/comm']);
      assert.equal(ex.stdout.trim(), 'memwork', ex.stderr);
      assert.equal(await b.destroy(c.name), true);
    } finally {
      await cleanup(c);
    }
  });
}

test('hybrid is refused for a podman container before anything is touched', { skip }, async () => {
  const c = await startMemContainer(16, 0);
  try {
    const r = await runCli(hosts.a, migrate(c.name, ['--mode', 'hybrid']));
    assert.equal(r.code, ExitCode.usage, r.stderr);
    assert.match(r.stderr, /lazily/);
    await expectUntouched(c);
  } finally {
    await cleanup(c);
  }
});

test('a destination without the container\'s image refuses it; the source keeps it running and intact', { skip }, async () => {
  // Imported again under another name: another image id, which only host a has.
  const only = 'localhost/phaul-test-only-a:1';
  await importImage(a, only, ['memwork'], dir);
  const c = await startMemContainer(32, 5, only);
  try {
    const r = await runCli(hosts.a, migrate(c.name, ['--mode', 'precopy']));
    assert.equal(r.code, ExitCode.failed, r.stderr);
    assert.match(r.json!.error.message, /no image/);
    assert.equal(r.json!.rolledBack, true);
    await expectUntouched(c);
  } finally {
    await cleanup(c);
  }
});
