// podman containers for tests and the bench, with no registry: `podman
// import` turns a busybox-static rootfs (plus the project's static workloads)
// into a local image. Each "host" is a podman state directory of its own
// (src/container/podman.ts); removing a host removes its containers, images
// and the mounts podman's storage left under it.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PhaulError } from '../errors';
import { criuBinary } from '../criu/binary';
import { findPodman, Podman, podmanRunroot } from '../container/podman';
import { findRunc } from '../container/runc';
import { makeRootfs } from './container';
import { runCmd } from './proc';

/** podman's default limits exceed root's hard limits on hosts without CAP_SYS_RESOURCE: run with these. */
export const PODMAN_ULIMITS = ['--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=4096:4096'];

export function podmanAvailable(): string | undefined {
  if (!findPodman()) return 'podman is not installed (scripts/setup.sh installs the Debian package)';
  if (!findRunc()) return 'runc is not installed (scripts/setup.sh installs the Debian package)';
  if (!fs.existsSync('/bin/busybox')) return 'busybox-static is not installed (scripts/setup.sh installs it)';
  return undefined;
}

/** A podman host whose state lives in `stateDir`, with the project's CRIU first on PATH. */
export function podmanHost(stateDir: string): Podman {
  fs.mkdirSync(stateDir, { recursive: true });
  return new Podman(stateDir, path.dirname(criuBinary()));
}

/** Imports a rootfs of busybox and `workloads` as image `tag` unless the host has it; `scratch` holds the tarball. */
export async function importImage(p: Podman, tag: string, workloads: string[], scratch: string): Promise<void> {
  if (await p.imageExists(tag)) return;
  const rootfs = path.join(scratch, `rootfs-${process.pid}`);
  const tar = `${rootfs}.tar`;
  try {
    await makeRootfs(rootfs, workloads);
    const t = await runCmd(['tar', '-C', rootfs, '-cf', tar, '.'], { timeoutMs: 60_000 });
    if (t.code !== 0) throw new PhaulError('failed', `tar: ${t.stderr.trim()}`);
    const r = await p.run(['import', tar, tag], 120_000);
    if (r.code !== 0) throw new PhaulError('failed', `podman import: ${r.stderr.trim().split('\n').pop()}`);
  } finally {
    fs.rmSync(rootfs, { recursive: true, force: true });
    fs.rmSync(tar, { force: true });
  }
}

/**
 * Gives `to` the image `tag` of `from` with the same image id (podman save and
 * load; a second import would make another id, and a checkpoint names its
 * image by id), as two hosts pulling one image from a registry would have it.
 */
export async function shareImage(from: Podman, to: Podman, tag: string, scratch: string): Promise<void> {
  if (await to.imageExists(tag)) return;
  const tar = path.join(scratch, `image-${process.pid}.tar`);
  try {
    const s = await from.run(['save', '--output', tar, tag], 120_000);
    if (s.code !== 0) throw new PhaulError('failed', `podman save: ${s.stderr.trim().split('\n').pop()}`);
    const l = await to.run(['load', '--input', tar], 120_000);
    if (l.code !== 0) throw new PhaulError('failed', `podman load: ${l.stderr.trim().split('\n').pop()}`);
  } finally {
    fs.rmSync(tar, { force: true });
  }
}

/** `podman run -d` with no network of the host's (its own namespace) and root's limits; resolves with the init's host pid. */
export async function runPodmanContainer(p: Podman, o: { name: string; image: string; args: string[]; extra?: string[] }): Promise<number> {
  const r = await p.run(['run', '--detach', '--name', o.name, '--network', 'none', ...PODMAN_ULIMITS, ...(o.extra ?? []), o.image, ...o.args], 120_000);
  if (r.code !== 0) throw new PhaulError('failed', `podman run ${o.name}: ${r.stderr.trim().split('\n').pop()}`);
  const c = await p.inspect(o.name);
  if (!c || c.pid <= 1) throw new PhaulError('failed', `podman run ${o.name}: no running init`);
  return c.pid;
}

/** Removes every container and image of the host, unmounts what its storage mounted and deletes its state directory. */
export async function removePodmanHost(p: Podman): Promise<void> {
  const dir = p.stateDir;
  if (!dir || !fs.existsSync(dir)) return;
  await p.run(['rm', '--all', '--force', '--time', '0'], 120_000);
  await p.run(['rmi', '--all', '--force'], 120_000);
  // (Not `podman system reset`: it also removes the machine's podman networks, which are not this host's.)
  for (const d of [dir, podmanRunroot(dir)]) {
    const mounts = fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').map((l) => l.split(' ')[1]?.replace(/\\040/g, ' '))
      .filter((m): m is string => !!m && (m === d || m.startsWith(d + '/')));
    for (const m of mounts.sort((a, b) => b.length - a.length)) await runCmd(['umount', '-l', m], { timeoutMs: 10_000 });
    fs.rmSync(d, { recursive: true, force: true });
  }
}
