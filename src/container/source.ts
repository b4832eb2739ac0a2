// The source side of a container migration: which tree to dump and how (as
// runc would), the bundle's files in rounds while the container runs and a
// last delta while it is frozen, and the runtime's record of the container
// deleted once the destination runs it. runc and podman differ only in how the
// container is found and forgotten (podman: src/container/podman-source.ts).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PhaulError } from '../errors';
import type { FrameConn } from '../protocol/frames';
import { containerDumpOptions, ContainerDumpOptions, writeDescriptors } from './dump-options';
import { hasTerminal, isBindMount, mountsOf, OciConfig, readOciConfig, rootfsOf } from './oci';
import { CONTAINER_ID, Runc } from './runc';
import { findPodmanContainer } from './podman-source';
import { SyncTree, TreeSender } from './tree-sync';

export type Runtime = 'runc' | 'podman';
export const RUNTIMES: readonly Runtime[] = ['runc', 'podman'];

export interface ContainerSpec {
  id: string;
  runtime?: Runtime;
  /** The runtime's state directory (runc --root; podman: src/container/podman.ts); default the runtime's. */
  runtimeRoot?: string;
  /** Both hosts see the container's rootfs at the same path: it is not copied. */
  sharedFs?: boolean;
  /** Host paths both hosts share: volumes under them are not copied. */
  sharedPaths?: string[];
}

/** What podman's restore needs besides CRIU's images and the writable layer. */
export interface PodmanDescriptor {
  /** podman's record of the container (libpod's ContainerConfig), as text: config.dump of a checkpoint archive. */
  configDump: string;
  /** The image the container runs on: the destination must have it (its layers are never moved). */
  imageId: string;
  imageName: string;
  /** podman's full id (the descriptor's id is the name or id the user gave). */
  fullId: string;
}

/** What the destination learns in `prepare` (checked there: it comes from the network). */
export interface ContainerDescriptor {
  id: string;
  runtime: Runtime;
  /** The source's config.json, as text. */
  config: string;
  /** The source's bundle path (the destination's default place for it). */
  bundle: string;
  /** The source's rootfs path (used in place with sharedFs). */
  rootfs: string;
  sharedFs: boolean;
  /** Bind mounts whose source moves with the container: index in config.mounts, and file or directory. */
  volumes: { mount: number; kind: 'd' | 'f' }[];
  /** podman only: the 'rootfs' tree is the writable layer, and podman's record of the container. */
  podman?: PodmanDescriptor;
}

/** A running container as its runtime describes it. */
export interface FoundContainer {
  pid: number;
  /** The OCI bundle its runtime ran (config.json). */
  bundle: string;
  config: OciConfig;
  configText: string;
  /** The root CRIU dumps (the container's / as the host sees it). */
  rootfs: string;
  /** What the 'rootfs' tree copies: the rootfs, or podman's writable layer only. */
  rootTree: string;
  /** Bind mounts whose source podman provides itself (never volumes). */
  runtimeOwned?: (source: string) => boolean;
  podman?: PodmanDescriptor;
  /** After the destination runs it: the runtime forgets the (killed) original; a warning if it would not. */
  forget(): Promise<string | undefined>;
}

/** Paths the kernel or the runtime provides, never copied as volumes. */
const HOST_PROVIDED = ['/proc', '/sys', '/dev'];

function under(p: string, dir: string): boolean {
  const rel = path.relative(dir, p);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

/** runc's record of a running container. */
async function findRuncContainer(spec: ContainerSpec): Promise<FoundContainer> {
  const runc = new Runc(spec.runtimeRoot);
  const st = await runc.state(spec.id);
  if (!st) throw new PhaulError('notFound', `no container ${spec.id} in runc's state directory ${runc.root}`);
  if (st.status !== 'running' || st.pid <= 1) throw new PhaulError('usage', `container ${spec.id} is ${st.status || 'not running'}; only a running container can move`);
  const config = readOciConfig(st.bundle);
  const rootfs = rootfsOf(config, st.bundle);
  return {
    pid: st.pid, bundle: st.bundle, config, configText: fs.readFileSync(path.join(st.bundle, 'config.json'), 'utf8'), rootfs, rootTree: rootfs,
    async forget() {
      const gone = await runc.destroy(spec.id);
      return gone ? undefined : `runc --root ${runc.root} delete --force ${spec.id} failed; delete it by hand`;
    },
  };
}

export class ContainerSource {
  private readonly sender: TreeSender;

  private constructor(
    readonly spec: ContainerSpec,
    private readonly found: FoundContainer,
    readonly volumes: ContainerDescriptor['volumes'],
  ) {
    const trees: SyncTree[] = [];
    if (!spec.sharedFs) trees.push({ name: 'rootfs', src: found.rootTree });
    for (const v of volumes) trees.push({ name: `volume-${v.mount}`, src: mountsOf(found.config)[v.mount].source! });
    this.sender = new TreeSender(trees);
  }

  get pid(): number {
    return this.found.pid;
  }

  get runtime(): Runtime {
    return this.spec.runtime ?? 'runc';
  }

  /** Can its runtime restore it lazily (hybrid)? podman 4.3 cannot. */
  get lazyRestore(): boolean {
    return this.runtime !== 'podman';
  }

  /** Finds a running container and refuses what cannot move. */
  static async open(spec: ContainerSpec): Promise<ContainerSource> {
    const runtime = spec.runtime ?? 'runc';
    if (!RUNTIMES.includes(runtime)) throw new PhaulError('usage', `runtime ${runtime} is not supported (have: ${RUNTIMES.join(', ')})`);
    if (!CONTAINER_ID.test(spec.id)) throw new PhaulError('usage', `'${spec.id.slice(0, 80)}' is not a container id`);
    const found = runtime === 'podman' ? await findPodmanContainer(spec) : await findRuncContainer(spec);
    const { config } = found;
    if (hasTerminal(config)) throw new PhaulError('usage', `container ${spec.id} has a terminal (process.terminal): its console cannot move with it`);
    const shared = (spec.sharedPaths ?? []).map((p) => path.resolve(p));
    const volumes: ContainerDescriptor['volumes'] = [];
    mountsOf(config).forEach((m, i) => {
      if (!isBindMount(m) || !m.source || !path.isAbsolute(m.source)) return;
      if (HOST_PROVIDED.some((d) => under(m.source!, d)) || shared.some((d) => under(m.source!, d))) return;
      if (found.runtimeOwned?.(m.source)) return;
      const s = fs.statSync(m.source, { throwIfNoEntry: false });
      if (!s || !(s.isDirectory() || s.isFile())) return;
      // podman's restore mounts a volume from where its record says (not from a copy of ours).
      if (runtime === 'podman') throw new PhaulError('usage', `container ${spec.id} bind-mounts ${m.source}: podman containers move only with volumes both hosts share (--shared-path)`);
      volumes.push({ mount: i, kind: s.isDirectory() ? 'd' : 'f' });
    });
    return new ContainerSource({ ...spec, runtime }, found, volumes);
  }

  describe(): ContainerDescriptor {
    const f = this.found;
    return { id: this.spec.id, runtime: this.spec.runtime ?? 'runc', config: f.configText, bundle: f.bundle,
      rootfs: f.rootfs, sharedFs: !!this.spec.sharedFs, volumes: this.volumes, ...(f.podman ? { podman: f.podman } : {}) };
  }

  dumpOptions(): ContainerDumpOptions {
    return containerDumpOptions(this.found.config, this.found.rootfs, this.pid);
  }

  /** A round of the bundle's files while the container runs. */
  syncRound(conn: FrameConn): { files: number; bytes: number } {
    return this.sender.round(conn);
  }

  /** With the container frozen: runc's descriptors.json beside CRIU's images, and the last delta. */
  finalRound(conn: FrameConn, imagesDir: string): { files: number; bytes: number } {
    writeDescriptors(imagesDir, this.pid);
    return this.sender.round(conn);
  }

  get bytesSent(): number {
    return this.sender.bytes;
  }

  /** After the destination runs it: the runtime forgets the (killed) original. */
  forget(): Promise<string | undefined> {
    return this.found.forget();
  }
}
