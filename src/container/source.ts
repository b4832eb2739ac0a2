// The source side of a container migration: which tree to dump and how (as
// runc would), the bundle's files in rounds while the container runs and a
// last delta while it is frozen, and the runtime's record of the container
// deleted once the destination runs it. runc and podman differ only in how the
// container is found and forgotten (podman: src/container/podman-source.ts).
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { PhaulError } from '../errors';
import type { FrameConn } from '../protocol/frames';
import { containerDumpOptions, ContainerDumpOptions, writeDescriptors } from './dump-options';
import { ContainerNetwork, hostPrefixes, namedNetns, netnsInode, readNetwork } from './network';
import { hasTerminal, isBindMount, mountsOf, namespacePath, OciConfig, readOciConfig, rootfsOf } from './oci';
import { CONTAINER_ID, execCmd, Runc } from './runc';
import { findPodmanContainer } from './podman-source';
import { Podman } from './podman';
import { criuBinary } from '../criu/binary';
import { SyncTree, TreeSender } from './tree-sync';
import { RUNTIMES, type Runtime } from './runtimes';

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
  /**
   * runc, when config.json names the container's network namespace by path
   * (it is external to CRIU): the destination makes a namespace of its own,
   * plugged in as `network` says (absent: lo only).
   */
  netns?: { network?: ContainerNetwork };
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
    /** config.json's network namespace path, and how it is plugged in here. */
    readonly netns?: { path: string; network?: ContainerNetwork },
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
    // (podman plugs its containers in itself, at both ends.)
    const netns = runtime === 'runc' ? await ContainerSource.readNetns(config, found.pid) : undefined;
    return new ContainerSource({ ...spec, runtime }, found, volumes, netns);
  }

  /** The container's network, when config.json names its namespace; a namespace of runc's own must hold only lo. */
  private static async readNetns(config: OciConfig, pid: number): Promise<{ path: string; network?: ContainerNetwork } | undefined> {
    const nsPath = namespacePath(config, 'network');
    if (nsPath) return { path: nsPath, network: await readNetwork(nsPath) };
    const own = `/proc/${pid}/ns/net`;
    if (netnsInode(own) === netnsInode('/proc/self/ns/net')) return undefined;
    if (await readNetwork(own).catch(() => 'plugged')) {
      throw new PhaulError('usage', 'the container\'s network namespace is plugged in but config.json does not name it ' +
        '(linux.namespaces network path): only a named namespace can be rebuilt at the destination');
    }
    return undefined;
  }

  get network(): ContainerNetwork | undefined {
    return this.netns?.network;
  }

  /** The container's network namespace (config.json's, else its own). */
  get netnsPath(): string {
    return this.netns?.path ?? `/proc/${this.pid}/ns/net`;
  }

  describe(): ContainerDescriptor {
    const f = this.found;
    return { id: this.spec.id, runtime: this.spec.runtime ?? 'runc', config: f.configText, bundle: f.bundle,
      rootfs: f.rootfs, sharedFs: !!this.spec.sharedFs, volumes: this.volumes, ...(f.podman ? { podman: f.podman } : {}),
      ...(this.netns ? { netns: this.netns.network ? { network: this.netns.network } : {} } : {}) };
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

  /**
   * Once the destination runs it: traffic for the container's addresses that
   * still reaches this host goes on to the destination (`via`, when it is on a
   * link of this host). Returns a warning when it cannot.
   */
  async routeToDestination(via: string): Promise<string | undefined> {
    if (!this.network) return undefined;
    const fam = net.isIP(via);
    const r = fam ? await execCmd(['ip', '-j', 'route', 'get', via], 10_000) : undefined;
    let onLink = false;
    try {
      const [route] = JSON.parse(r?.stdout ?? '[]') as { gateway?: string; dev?: string }[];
      onLink = !!route && !route.gateway && route.dev !== 'lo';
    } catch { /* not on a link */ }
    const prefixes = hostPrefixes(this.network).filter((p) => (p.family === 'inet' ? 4 : 6) === fam);
    if (!onLink || prefixes.length === 0) return `the container's addresses still route to this host: ${via} is not on one of its links`;
    for (const p of prefixes) {
      const res = await execCmd(['ip', p.family === 'inet' ? '-4' : '-6', 'route', 'replace', p.prefix, 'via', via], 10_000);
      if (res.code !== 0) return `ip route replace ${p.prefix} via ${via}: ${res.stderr.trim()}`;
    }
    return undefined;
  }

  /** After the destination runs it: the runtime forgets the (killed) original, and its named network namespace goes. */
  async forget(): Promise<string | undefined> {
    return joinWarnings([await this.found.forget(), this.netns ? await deleteNetns(this.netns.path) : undefined]);
  }
}

/** A container's named network namespace (config.json's) goes once its tasks are gone; a warning if not. */
async function deleteNetns(nsPath: string): Promise<string | undefined> {
  const name = namedNetns(nsPath);
  if (!name) return `the container's network namespace ${nsPath} is not a named one (ip netns): left in place`;
  const r = await execCmd(['ip', 'netns', 'del', name], 10_000);
  return r.code !== 0 ? `ip netns del ${name} failed: ${r.stderr.trim()}` : undefined;
}

function joinWarnings(ws: (string | undefined)[]): string | undefined {
  const w = ws.filter((x): x is string => !!x);
  return w.length ? w.join('; ') : undefined;
}

/**
 * `phaul-fast resolve` after the destination's copy of a container took over
 * and the original was killed: the source runtime forgets the container (as
 * ContainerSource.forget does at the end of a migration), and its named
 * network namespace goes. A warning if not.
 */
export async function forgetMovedContainer(spec: ContainerSpec, netnsPath?: string): Promise<string | undefined> {
  const found = spec.runtime === 'podman' ? new Podman(spec.runtimeRoot, path.dirname(criuBinary())) : new Runc(spec.runtimeRoot);
  const gone = await found.destroy(spec.id);
  const how = spec.runtime === 'podman' ? `podman rm --force ${spec.id}` : `runc delete --force ${spec.id}`;
  return joinWarnings([gone ? undefined : `${how} failed; remove it by hand`, netnsPath ? await deleteNetns(netnsPath) : undefined]);
}
