// The source side of a container migration: which tree to dump and how (as
// runc would), the bundle's files in rounds while the container runs and a
// last delta while it is frozen, and runc's record of the container deleted
// once the destination runs it.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PhaulError } from '../errors';
import type { FrameConn } from '../protocol/frames';
import { containerDumpOptions, ContainerDumpOptions, writeDescriptors } from './dump-options';
import { hasTerminal, isBindMount, mountsOf, OciConfig, readOciConfig, rootfsOf } from './oci';
import { CONTAINER_ID, Runc } from './runc';
import { SyncTree, TreeSender } from './tree-sync';

export type Runtime = 'runc';
export const RUNTIMES: readonly Runtime[] = ['runc'];

export interface ContainerSpec {
  id: string;
  runtime?: Runtime;
  /** The runtime's state directory (runc --root); default the runtime's. */
  runtimeRoot?: string;
  /** Both hosts see the container's rootfs at the same path: it is not copied. */
  sharedFs?: boolean;
  /** Host paths both hosts share: volumes under them are not copied. */
  sharedPaths?: string[];
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
}

/** Paths the kernel or the runtime provides, never copied as volumes. */
const HOST_PROVIDED = ['/proc', '/sys', '/dev'];

function under(p: string, dir: string): boolean {
  const rel = path.relative(dir, p);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

export class ContainerSource {
  private readonly sender: TreeSender;

  private constructor(
    readonly spec: ContainerSpec,
    readonly runc: Runc,
    readonly pid: number,
    readonly bundle: string,
    readonly config: OciConfig,
    readonly configText: string,
    readonly rootfs: string,
    readonly volumes: ContainerDescriptor['volumes'],
  ) {
    const trees: SyncTree[] = [];
    if (!spec.sharedFs) trees.push({ name: 'rootfs', src: rootfs });
    for (const v of volumes) trees.push({ name: `volume-${v.mount}`, src: mountsOf(config)[v.mount].source! });
    this.sender = new TreeSender(trees);
  }

  /** Finds a running container and refuses what cannot move. */
  static async open(spec: ContainerSpec): Promise<ContainerSource> {
    const runtime = spec.runtime ?? 'runc';
    if (!RUNTIMES.includes(runtime)) throw new PhaulError('usage', `runtime ${runtime} is not supported (have: ${RUNTIMES.join(', ')})`);
    if (!CONTAINER_ID.test(spec.id)) throw new PhaulError('usage', `'${spec.id.slice(0, 80)}' is not a container id`);
    const runc = new Runc(spec.runtimeRoot);
    const st = await runc.state(spec.id);
    if (!st) throw new PhaulError('notFound', `no container ${spec.id} in runc's state directory ${runc.root}`);
    if (st.status !== 'running' || st.pid <= 1) throw new PhaulError('usage', `container ${spec.id} is ${st.status || 'not running'}; only a running container can move`);
    const config = readOciConfig(st.bundle);
    const configText = fs.readFileSync(path.join(st.bundle, 'config.json'), 'utf8');
    if (hasTerminal(config)) throw new PhaulError('usage', `container ${spec.id} has a terminal (process.terminal): its console cannot move with it`);
    const rootfs = rootfsOf(config, st.bundle);
    const shared = (spec.sharedPaths ?? []).map((p) => path.resolve(p));
    const volumes: ContainerDescriptor['volumes'] = [];
    mountsOf(config).forEach((m, i) => {
      if (!isBindMount(m) || !m.source || !path.isAbsolute(m.source)) return;
      if (HOST_PROVIDED.some((d) => under(m.source!, d)) || shared.some((d) => under(m.source!, d))) return;
      const s = fs.statSync(m.source, { throwIfNoEntry: false });
      if (!s || !(s.isDirectory() || s.isFile())) return;
      volumes.push({ mount: i, kind: s.isDirectory() ? 'd' : 'f' });
    });
    return new ContainerSource({ ...spec, runtime }, runc, st.pid, st.bundle, config, configText, rootfs, volumes);
  }

  describe(): ContainerDescriptor {
    return { id: this.spec.id, runtime: this.spec.runtime ?? 'runc', config: this.configText, bundle: this.bundle,
      rootfs: this.rootfs, sharedFs: !!this.spec.sharedFs, volumes: this.volumes };
  }

  dumpOptions(): ContainerDumpOptions {
    return containerDumpOptions(this.config, this.rootfs, this.pid);
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

  /** After the destination runs it: runc forgets the (killed) original. */
  async forget(): Promise<string | undefined> {
    const gone = await this.runc.destroy(this.spec.id);
    return gone ? undefined : `runc --root ${this.runc.root} delete --force ${this.spec.id} failed; delete it by hand`;
  }
}
