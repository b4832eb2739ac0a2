// The destination side of a container migration: a bundle of its own (config
// from the source, rootfs and volumes received in rounds), then `runc restore`
// so that this host's runc owns the container, with a CRIU configuration file
// that leaves the restored tree stopped: the two-phase commit holds, and
// runc's `list`, `exec`, `kill` and `delete` work on the result.
//
// One machine may play both hosts (the tests): the container never shares the
// source's bundle, runc state directory or cgroup.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PhaulError } from '../errors';
import { criuFlagArgs } from '../criu/cli-flags';
import { criuLogTail } from '../criu/rpc';
import type { CriuFlags, TreeData, TreeEntries } from '../protocol/messages';
import { MASKED_DIR_KEY } from './dump-options';
import { NetworkPlumbing } from './net-plumbing';
import { checkNetwork } from './network';
import { mountsOf, OciConfig, parseOciConfig } from './oci';
import { CONTAINER_ID, Runc } from './runc';
import type { ContainerDescriptor } from './source';
import { PodmanTarget } from './podman-target';
import { TreeReceiver } from './tree-sync';

export interface ContainerServeOptions {
  /** runc's state directory here (default runc's). */
  runtimeRoot?: string;
  /** Where moved bundles go, one directory per container (default: the source's bundle path). */
  bundles?: string;
  /** cgroup parent for moved containers (their cgroupsPath becomes PARENT/ID); default: the source's cgroupsPath. */
  cgroupParent?: string;
  /** podman's state directory here (src/container/podman.ts; default podman's own). */
  podmanRoot?: string;
}

/** What the destination agent needs of a container's runtime, whichever it is. */
export interface RuntimeTarget {
  readonly desc: ContainerDescriptor;
  /** Where this host keeps the container's files. */
  readonly bundle: string;
  handle(m: TreeEntries | TreeData): void;
  /** Restores the tree stopped; resolves with the restored init's pid. */
  restore(o: RestoreOptions): Promise<number>;
  /** At the commit, before the tree resumes (runc: the lock on the network namespace made here goes). */
  opening?(): Promise<void>;
  committed(): void;
  rollback(): Promise<void>;
  report(): { id: string; runtime: string; bundle: string; netns?: string };
}

export interface RestoreOptions {
  imagesDir: string;
  criu: string;
  criuFlags: CriuFlags;
  lazy: boolean;
  timeoutMs: number;
}

/** Checks a descriptor from the network and prepares its runtime's side. */
export async function prepareContainerTarget(raw: unknown, opts: ContainerServeOptions): Promise<RuntimeTarget> {
  const desc = parseDescriptor(raw);
  return desc.runtime === 'podman' ? PodmanTarget.prepare(desc, opts) : ContainerTarget.prepare(desc, opts);
}

/** An empty, read-only directory in `dir` for the container's masked directories. */
export function maskedDir(dir: string): string {
  const d = path.join(dir, 'masked');
  fs.mkdirSync(d, { recursive: true, mode: 0o555 });
  return d;
}

/** The host's CRIU settings for runc, which our per-container configuration replaces. */
export function baseCriuConf(): string {
  try { return fs.readFileSync(RUNC_CRIU_CONF, 'utf8'); } catch { return ''; }
}

/**
 * The CRIU configuration runc's CRIU reads for a moved container (its
 * `org.criu.config` annotation): the host's, the nftables network lock when
 * the host names none (runc's CRIU would use iptables), the migration's flags,
 * the empty directory masked directories are bound from (dump-options.ts), and
 * leave-stopped, so that the restored tree waits for the commit.
 */
export function restoreCriuConf(flags: CriuFlags, maskedDir: string): string {
  const base = baseCriuConf();
  const lines = [base, `external mnt[${MASKED_DIR_KEY}]:${maskedDir}`];
  // A configuration file says `option value` where the command line says `--option value`.
  for (const a of criuFlagArgs(flags)) {
    if (a.startsWith('--')) lines.push(a.slice(2));
    else lines[lines.length - 1] += ` ${a}`;
  }
  if (!lines.some((l) => /^\s*network-lock\b/m.test(l))) lines.push('network-lock nftables');
  lines.push('leave-stopped');
  return `${lines.join('\n')}\n`;
}

/** The file runc's CRIU reads for this container (its `org.criu.config` annotation), in the bundle. */
export const CRIU_CONF = 'phaul-fast.criu.conf';
const RUNC_CRIU_CONF = '/etc/criu/runc.conf';

export function parseDescriptor(raw: unknown): ContainerDescriptor {
  const d = raw as Record<string, unknown>;
  const s = (k: string, max = 4096, from: Record<string, unknown> | undefined = d) => {
    if (typeof from?.[k] !== 'string' || (from[k] as string).length > max) throw new PhaulError('protocol', `bad container '${k}'`);
    return from[k] as string;
  };
  if (!d || typeof d !== 'object') throw new PhaulError('protocol', 'bad container descriptor');
  const id = s('id', 128);
  if (!CONTAINER_ID.test(id)) throw new PhaulError('protocol', 'bad container id');
  const runtime = d.runtime;
  if (runtime !== 'runc' && runtime !== 'podman') throw new PhaulError('incompatible', `container runtime '${String(runtime).slice(0, 20)}' is not supported here`);
  const vols = Array.isArray(d.volumes) ? d.volumes : [];
  if (vols.length > 256) throw new PhaulError('protocol', 'too many volumes');
  const volumes = vols.map((raw: unknown) => {
    const v = raw as { mount?: unknown; kind?: unknown } | null;
    if (!v || typeof v.mount !== 'number' || !Number.isInteger(v.mount) || v.mount < 0 || v.mount > 4096 || (v.kind !== 'd' && v.kind !== 'f')) throw new PhaulError('protocol', 'bad volume');
    return { mount: v.mount, kind: v.kind as 'd' | 'f' };
  });
  const desc: ContainerDescriptor = { id, runtime, config: s('config', 4 << 20), bundle: s('bundle'), rootfs: s('rootfs'), sharedFs: d.sharedFs === true, volumes };
  if (runtime === 'podman') {
    const p = d.podman as Record<string, unknown> | undefined;
    if (!p || typeof p !== 'object') throw new PhaulError('protocol', 'a podman container without podman\'s record');
    const fullId = s('fullId', 64, p);
    if (!/^[0-9a-f]{64}$/.test(fullId)) throw new PhaulError('protocol', 'bad podman container id');
    const imageId = s('imageId', 64, p);
    if (!/^[0-9a-f]{64}$/.test(imageId)) throw new PhaulError('protocol', 'bad podman image id');
    desc.podman = { configDump: s('configDump', 4 << 20, p), imageId, imageName: s('imageName', 1024, p), fullId };
  }
  if (d.netns !== undefined) {
    const n = d.netns as { network?: unknown } | null;
    if (runtime !== 'runc' || !n || typeof n !== 'object') throw new PhaulError('protocol', 'bad container netns');
    desc.netns = n.network === undefined ? {} : { network: checkNetwork(n.network) };
  }
  return desc;
}

/** Does any controller's cgroup at `cgPath` hold processes? */
export function cgroupInUse(cgPath: string): string | undefined {
  const base = '/sys/fs/cgroup';
  let dirs: string[];
  try { dirs = fs.readdirSync(base); } catch { return undefined; }
  for (const c of ['', ...dirs]) {
    try {
      if (fs.readFileSync(path.join(base, c, cgPath, 'cgroup.procs'), 'utf8').trim() !== '') return path.join(base, c, cgPath);
    } catch { /* not there */ }
  }
  return undefined;
}

export class ContainerTarget implements RuntimeTarget {
  readonly runc: Runc;
  private readonly receiver: TreeReceiver;
  private created = false;
  restoredPid = 0;
  /** The network namespace made here, when the source's was named in config.json. */
  readonly plumbing?: NetworkPlumbing;

  private constructor(readonly desc: ContainerDescriptor, readonly opts: ContainerServeOptions,
    readonly bundle: string, private readonly config: OciConfig) {
    this.runc = new Runc(opts.runtimeRoot);
    const roots = new Map<string, string>();
    if (!desc.sharedFs) roots.set('rootfs', path.join(bundle, 'rootfs'));
    for (const v of desc.volumes) roots.set(`volume-${v.mount}`, path.join(bundle, 'volumes', String(v.mount)));
    this.receiver = new TreeReceiver(roots);
    if (desc.netns) this.plumbing = new NetworkPlumbing(desc.netns.network, `phaul-${desc.id}`);
  }

  /** Checks that nothing here collides with the container, then creates the bundle directory. */
  static async prepare(desc: ContainerDescriptor, opts: ContainerServeOptions): Promise<ContainerTarget> {
    const config = parseOciConfig(desc.config, 'the container\'s config.json');
    const mounts = mountsOf(config);
    for (const v of desc.volumes) if (!mounts[v.mount]) throw new PhaulError('protocol', 'volume names no mount');
    if (!path.isAbsolute(desc.bundle) || !path.isAbsolute(desc.rootfs)) throw new PhaulError('protocol', 'bundle paths must be absolute');
    const bundle = opts.bundles ? path.join(path.resolve(opts.bundles), desc.id) : path.resolve(desc.bundle);
    const t = new ContainerTarget(desc, opts, bundle, config);
    if (await t.runc.state(desc.id)) throw new PhaulError('failed', `a container ${desc.id} already exists in runc's ${t.runc.root} at the destination`);
    if (fs.existsSync(bundle)) throw new PhaulError('failed', `the destination's bundle directory ${bundle} already exists (serve --bundles DIR puts moved bundles elsewhere)`);
    const cg = t.cgroupsPath();
    const busy = cg ? cgroupInUse(cg) : undefined;
    if (busy) throw new PhaulError('failed', `the destination's cgroup ${busy} is in use (serve --cgroup-parent puts moved containers elsewhere)`);
    t.plumbing?.check();
    fs.mkdirSync(path.dirname(bundle), { recursive: true });
    fs.mkdirSync(bundle, { mode: 0o711 });
    t.created = true;
    if (!desc.sharedFs) fs.mkdirSync(path.join(bundle, 'rootfs'), { mode: 0o755 });
    for (const v of desc.volumes) if (v.kind === 'd') fs.mkdirSync(path.join(bundle, 'volumes', String(v.mount)), { recursive: true });
    if (desc.volumes.some((v) => v.kind === 'f')) fs.mkdirSync(path.join(bundle, 'volumes'), { recursive: true });
    try {
      await t.plumbing?.plug();
    } catch (e) {
      await t.rollback();
      throw e;
    }
    return t;
  }

  private cgroupsPath(): string | undefined {
    if (this.opts.cgroupParent) return path.posix.join('/', this.opts.cgroupParent, this.desc.id);
    const p = this.config.linux?.cgroupsPath;
    return typeof p === 'string' && p !== '' && !p.includes(':') ? p : undefined;
  }

  /** tree-entries and tree-data messages. */
  handle(m: TreeEntries | TreeData): void {
    this.receiver.handle(m);
  }

  /** The bundle's config.json: our rootfs, volumes and cgroup, and the CRIU configuration that leaves the tree stopped. */
  private writeConfig(): void {
    const c = JSON.parse(JSON.stringify(this.config)) as OciConfig;
    c.root.path = this.desc.sharedFs ? this.desc.rootfs : 'rootfs';
    const mounts = mountsOf(c);
    for (const v of this.desc.volumes) mounts[v.mount].source = path.join(this.bundle, 'volumes', String(v.mount));
    const cg = this.cgroupsPath();
    if (cg) c.linux = { ...(c.linux ?? {}), cgroupsPath: cg };
    if (this.plumbing && Array.isArray(c.linux?.namespaces)) {
      for (const ns of c.linux.namespaces) if (ns?.type === 'network') ns.path = this.plumbing.nsPath;
    }
    c.annotations = { ...(c.annotations ?? {}), 'org.criu.config': path.join(this.bundle, CRIU_CONF) };
    fs.writeFileSync(path.join(this.bundle, 'config.json'), JSON.stringify(c, null, 2));
  }

  /** runc restore, leaving the tree stopped; resolves with the restored init's pid. */
  async restore(o: RestoreOptions): Promise<number> {
    this.writeConfig();
    // (The flags go on runc's command line too, which is where runc looks for them.)
    fs.writeFileSync(path.join(this.bundle, CRIU_CONF), restoreCriuConf({}, maskedDir(this.bundle)));
    const flags: string[] = [];
    if (o.criuFlags.tcpEstablished) flags.push('--tcp-established');
    if (o.criuFlags.extUnixSk) flags.push('--ext-unix-sk');
    if (o.criuFlags.shellJob) flags.push('--shell-job');
    if (o.criuFlags.fileLocks) flags.push('--file-locks');
    if (o.lazy) flags.push('--lazy-pages');
    else flags.push('--auto-dedup');
    try {
      await this.runc.restore({ id: this.desc.id, bundle: this.bundle, imagesDir: o.imagesDir, workDir: o.imagesDir,
        criu: o.criu, flags, timeoutMs: o.timeoutMs });
    } catch (e) {
      // runc names CRIU's log; what CRIU said is more use to whoever reads this.
      const tail = criuLogTail(path.join(o.imagesDir, 'restore.log'));
      throw tail ? new PhaulError('criu', `runc restore failed: ${tail}`) : e;
    }
    const st = await this.runc.state(this.desc.id);
    if (!st || st.pid <= 1) throw new PhaulError('criu', `runc restore succeeded but runc does not know container ${this.desc.id}`);
    this.restoredPid = st.pid;
    return st.pid;
  }

  /** At the commit, before the tree resumes: its sockets may talk. */
  async opening(): Promise<void> {
    await this.plumbing?.open();
  }

  /** After the commit: later checkpoints of this container by runc use the host's settings again. */
  committed(): void {
    try {
      fs.writeFileSync(path.join(this.bundle, CRIU_CONF), baseCriuConf());
    } catch { /* the container runs; this only matters to a later runc checkpoint */ }
  }

  /** Before the commit: the stopped copy never ran; runc forgets it and the bundle we made goes. */
  async rollback(): Promise<void> {
    if (this.restoredPid || (await this.runc.state(this.desc.id))) await this.runc.destroy(this.desc.id);
    if (this.created) fs.rmSync(this.bundle, { recursive: true, force: true });
    this.created = false;
    await this.plumbing?.unplug();
  }

  report(): { id: string; runtime: string; bundle: string; netns?: string } {
    return { id: this.desc.id, runtime: this.desc.runtime, bundle: this.bundle, ...(this.plumbing ? { netns: this.plumbing.nsPath } : {}) };
  }
}
