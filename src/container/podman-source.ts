// A podman container at the source: podman runs its init under conmon with
// runc, from an OCI bundle in podman's per-container directory. We dump it as
// runc would (the bundle's config.json says how), copy only its writable layer
// (the image's layers are the destination's own), and hand the destination
// podman's record of it; after the commit podman removes the original.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PhaulError } from '../errors';
import { criuBinary } from '../criu/binary';
import { readLibpodConfig } from './libpod-db';
import { readOciConfig } from './oci';
import { Podman } from './podman';
import type { ContainerSpec, FoundContainer } from './source';

export async function findPodmanContainer(spec: ContainerSpec): Promise<FoundContainer> {
  if (spec.sharedFs) throw new PhaulError('usage', 'a podman container\'s writable layer always moves (--shared-fs is for runc bundles)');
  const podman = new Podman(spec.runtimeRoot, path.dirname(criuBinary()));
  const c = await podman.inspect(spec.id);
  const where = spec.runtimeRoot ? ` (podman state ${spec.runtimeRoot})` : '';
  if (!c) throw new PhaulError('notFound', `podman has no container ${spec.id}${where}`);
  if (c.status !== 'running' || c.pid <= 1) throw new PhaulError('usage', `container ${spec.id} is ${c.status || 'not running'}; only a running container can move`);
  // Debian's crun is built without CRIU; runc is what checkpoints and restores here.
  if (c.ociRuntime !== 'runc') throw new PhaulError('usage', `podman runs container ${spec.id} with ${c.ociRuntime || 'an unknown runtime'}; only runc containers (podman --runtime runc) can move`);
  if (!c.upperDir) throw new PhaulError('usage', `container ${spec.id} has no writable overlay layer (podman's overlay storage driver is needed)`);
  const configDump = readLibpodConfig(c.graphRoot, c.id);
  const record = JSON.parse(configDump) as { namedVolumes?: unknown[]; pod?: unknown; dependencies?: unknown[] };
  if (Array.isArray(record.namedVolumes) && record.namedVolumes.length) throw new PhaulError('usage', `container ${spec.id} has named volumes, which do not move yet`);
  if (typeof record.pod === 'string' && record.pod !== '') throw new PhaulError('usage', `container ${spec.id} belongs to a pod; pods do not move`);
  const config = readOciConfig(c.bundle);
  const rootfs = config.root.path;
  if (!path.isAbsolute(rootfs)) throw new PhaulError('failed', `podman's bundle for ${spec.id} has a relative root.path`);
  const own = `/${c.id}/userdata`;
  return {
    pid: c.pid,
    bundle: c.bundle,
    config,
    configText: fs.readFileSync(path.join(c.bundle, 'config.json'), 'utf8'),
    rootfs,
    rootTree: c.upperDir,
    // /etc/hosts, /etc/resolv.conf, /dev/shm, /run/.containerenv...: podman makes them again at the destination.
    runtimeOwned: (source) => source.includes(`${own}/`) || source.endsWith(own),
    podman: { configDump, imageId: c.imageId, imageName: c.imageName, fullId: c.id },
    async forget() {
      const gone = await podman.destroy(c.id);
      return gone ? undefined : `podman rm --force ${c.id} failed; remove it by hand`;
    },
  };
}
