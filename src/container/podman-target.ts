// A podman container at the destination. podman restores a container from a
// checkpoint archive (`podman container restore --import`): podman's record
// of it (config.dump), its OCI spec (spec.dump), CRIU's images (checkpoint/)
// and the changes of its writable layer (rootfs-diff.tar) over an image this
// host already has. We build that archive from what the migration brought:
// the images CRIU wrote at the source (their pages stay in our store: the
// images' `parent` link points there from where podman unpacks them), the
// writable layer received in rounds, and the source's record and spec with
// this host's cgroup and a CRIU configuration (the spec's `org.criu.config`
// annotation, which runc hands to CRIU) that leaves the tree stopped until the
// commit. podman then owns it: `podman ps` lists it, stop, exec and rm work.
//
// podman 4.3 has no lazy restore: hybrid is not offered for podman containers.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PhaulError } from '../errors';
import { criuBinary } from '../criu/binary';
import { criuLogTail } from '../criu/rpc';
import type { TreeData, TreeEntries } from '../protocol/messages';
import { execCmd } from './runc';
import { parseOciConfig } from './oci';
import { Podman } from './podman';
import type { ContainerDescriptor, PodmanDescriptor } from './source';
import { baseCriuConf, cgroupInUse, type ContainerServeOptions, CRIU_CONF, maskedDir, type RestoreOptions, restoreCriuConf, type RuntimeTarget } from './target';
import { TreeReceiver } from './tree-sync';

/** CRIU's link from a dump's images to its parent's (our store). */
const PARENT_LINK = 'parent';
/** The action script that makes that link where podman unpacked the images. */
const PARENT_SCRIPT = 'phaul-fast.parent-link.sh';

export class PodmanTarget implements RuntimeTarget {
  private readonly receiver: TreeReceiver;
  private created = false;
  private restored = false;
  private userdata = '';

  private constructor(
    readonly desc: ContainerDescriptor,
    private readonly pod: PodmanDescriptor,
    private readonly podman: Podman,
    /** Our staging directory for this container: the writable layer received, the archive, the CRIU configuration. */
    readonly bundle: string,
    private readonly cgroupParent: string | undefined,
  ) {
    this.receiver = new TreeReceiver(new Map([['rootfs', path.join(bundle, 'rootfs')]]));
  }

  static async prepare(desc: ContainerDescriptor, opts: ContainerServeOptions): Promise<PodmanTarget> {
    const pod = desc.podman!;
    if (desc.sharedFs || desc.volumes.length) throw new PhaulError('protocol', 'a podman container moves its writable layer and no volumes');
    let record: { id?: unknown; cgroupParent?: unknown };
    try {
      record = JSON.parse(pod.configDump);
    } catch {
      throw new PhaulError('protocol', 'podman\'s record of the container is not JSON');
    }
    if (!record || typeof record !== 'object' || record.id !== pod.fullId) throw new PhaulError('protocol', 'podman\'s record names another container');
    const spec = parseOciConfig(desc.config, 'the container\'s OCI spec');
    const podman = new Podman(opts.podmanRoot, path.dirname(criuBinary()));
    if (await podman.inspect(pod.fullId)) throw new PhaulError('failed', `the destination's podman already has container ${pod.fullId.slice(0, 12)}`);
    if (desc.id !== pod.fullId && (await podman.inspect(desc.id))) throw new PhaulError('failed', `the destination's podman already has a container ${desc.id}`);
    if (!(await podman.imageExists(pod.imageId))) {
      throw new PhaulError('failed', `the destination's podman has no image ${pod.imageName || '?'} (${pod.imageId.slice(0, 12)}): image layers do not move; pull or load it there first`);
    }
    const parent = opts.cgroupParent ? path.posix.join('/', opts.cgroupParent) : undefined;
    const cg = parent ? path.posix.join(parent, `libpod-${pod.fullId}`) : typeof spec.linux?.cgroupsPath === 'string' ? spec.linux.cgroupsPath : undefined;
    const busy = cg && !cg.includes(':') ? cgroupInUse(cg) : undefined;
    if (busy) throw new PhaulError('failed', `the destination's cgroup ${busy} is in use (serve --cgroup-parent puts moved containers elsewhere)`);
    const bundle = path.join(path.resolve(opts.bundles ?? path.join(os.tmpdir(), 'phaul-fast-podman')), pod.fullId);
    if (fs.existsSync(bundle)) throw new PhaulError('failed', `the destination's staging directory ${bundle} already exists`);
    fs.mkdirSync(path.dirname(bundle), { recursive: true });
    fs.mkdirSync(bundle, { mode: 0o700 });
    fs.mkdirSync(path.join(bundle, 'rootfs'), { mode: 0o755 });
    const t = new PodmanTarget(desc, pod, podman, bundle, parent);
    t.created = true;
    return t;
  }

  handle(m: TreeEntries | TreeData): void {
    this.receiver.handle(m);
  }

  /** Where podman keeps the container's files, which is where it unpacks the archive. */
  private async podmanUserdata(): Promise<string> {
    const r = await this.podman.run(['info', '--format', '{{.Store.GraphRoot}}\t{{.Store.GraphDriverName}}'], 30_000);
    const [graphRoot, driver] = r.stdout.trim().split('\t');
    if (r.code !== 0 || !graphRoot || !driver) throw new PhaulError('failed', `podman info failed: ${r.stderr.trim().split('\n').pop()}`);
    return path.join(graphRoot, `${driver}-containers`, this.pod.fullId, 'userdata');
  }

  /** The checkpoint archive podman imports, in the staging directory. */
  private async writeArchive(o: RestoreOptions): Promise<string> {
    const meta = path.join(this.bundle, 'meta');
    fs.mkdirSync(meta, { recursive: true });
    const conf = path.join(this.bundle, CRIU_CONF);
    fs.writeFileSync(conf, restoreCriuConf(o.criuFlags, maskedDir(this.bundle)));
    const spec = parseOciConfig(this.desc.config, 'the container\'s OCI spec');
    spec.annotations = { ...(spec.annotations ?? {}), 'org.criu.config': conf };
    const record = JSON.parse(this.pod.configDump) as Record<string, unknown>;
    if (this.cgroupParent) {
      spec.linux = { ...(spec.linux ?? {}), cgroupsPath: path.posix.join(this.cgroupParent, `libpod-${this.pod.fullId}`) };
      record.cgroupParent = this.cgroupParent;
    }
    fs.writeFileSync(path.join(meta, 'spec.dump'), JSON.stringify(spec));
    fs.writeFileSync(path.join(meta, 'config.dump'), JSON.stringify(record));
    const tar = async (args: string[], what: string) => {
      const r = await execCmd(['tar', '--numeric-owner', ...args], o.timeoutMs);
      if (r.code !== 0) throw new PhaulError('failed', `tar (${what}): ${r.stderr.trim().split('\n').pop()}`);
    };
    await tar(['-C', path.join(this.bundle, 'rootfs'), '-cf', path.join(meta, 'rootfs-diff.tar'), '.'], 'the writable layer');

    // CRIU's images name their parent (the pages in our store) with a link
    // podman's unpacking refuses (it leads out of the archive): it stays out
    // of the archive, and a pre-restore action script makes it where podman
    // unpacked the images, before CRIU reads them.
    this.userdata = await this.podmanUserdata();
    const link = path.join(o.imagesDir, PARENT_LINK);
    const hasParent = fs.lstatSync(link, { throwIfNoEntry: false })?.isSymbolicLink() === true;
    if (hasParent) {
      const rel = path.relative(path.join(this.userdata, 'checkpoint'), path.resolve(o.imagesDir, fs.readlinkSync(link)));
      if (/['\\\n]/.test(rel)) throw new PhaulError('failed', `cannot name the page store ${rel} in a shell script`);
      const script = path.join(this.bundle, PARENT_SCRIPT);
      fs.writeFileSync(script, '#!/bin/sh\n# phaul-fast: the restored images\' link to the pages already on this host\n' +
        `[ "$CRTOOLS_SCRIPT_ACTION" = pre-restore ] || exit 0\nexec ln -sfn '${rel}' "$CRTOOLS_IMAGE_DIR/${PARENT_LINK}"\n`, { mode: 0o755 });
      fs.appendFileSync(conf, `action-script ${script}\n`);
    }
    const archive = path.join(this.bundle, 'checkpoint.tar');
    const base = path.basename(o.imagesDir);
    // (Our images directory's own name becomes checkpoint/.)
    await tar(['-cf', archive, '-C', meta, 'config.dump', 'spec.dump', 'rootfs-diff.tar', `--exclude=${base}/${PARENT_LINK}`,
      `--transform=s,^${base.replace(/[^A-Za-z0-9_-]/g, '.')},checkpoint,S`, '-C', path.dirname(o.imagesDir), base], 'the archive');
    return archive;
  }

  async restore(o: RestoreOptions): Promise<number> {
    if (o.lazy) throw new PhaulError('incompatible', 'podman 4.3 cannot restore a container lazily (no hybrid for podman containers)');
    const archive = await this.writeArchive(o);
    const r = await this.podman.run(['container', 'restore', '--import', archive], o.timeoutMs);
    this.restored = true;
    if (r.code !== 0) {
      const tail = criuLogTail(path.join(this.userdata, 'restore.log'));
      throw new PhaulError('criu', `podman container restore failed: ${tail || r.stderr.trim().split('\n').pop() || `exit ${r.code}`}`);
    }
    const c = await this.podman.inspect(this.pod.fullId);
    if (!c || c.pid <= 1) throw new PhaulError('criu', `podman container restore succeeded but podman does not run ${this.pod.fullId.slice(0, 12)}`);
    return c.pid;
  }

  /** After the commit: the archive goes; later checkpoints by podman read the host's CRIU settings again. */
  committed(): void {
    try {
      for (const f of ['rootfs', 'meta', 'checkpoint.tar', PARENT_SCRIPT]) fs.rmSync(path.join(this.bundle, f), { recursive: true, force: true });
      fs.writeFileSync(path.join(this.bundle, CRIU_CONF), baseCriuConf());
    } catch { /* the container runs; this only matters to a later checkpoint */ }
  }

  /** Before the commit: the stopped copy never ran; podman forgets it and our staging goes. */
  async rollback(): Promise<void> {
    if (this.restored || (await this.podman.inspect(this.pod.fullId))) await this.podman.destroy(this.pod.fullId);
    if (this.created) fs.rmSync(this.bundle, { recursive: true, force: true });
    this.created = false;
  }

  report(): { id: string; runtime: string; bundle: string } {
    return { id: this.desc.id, runtime: 'podman', bundle: this.userdata || this.bundle };
  }
}
