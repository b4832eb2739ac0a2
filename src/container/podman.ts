// podman through its command line. podman runs a container's init under
// conmon with an OCI runtime; CRIU works only through runc here (Debian's
// crun is built without CRIU), so every podman command names runc. podman and
// the runc it starts find CRIU on PATH: ours goes first.
//
// A podman "host" is podman's defaults, or one state directory DIR holding
// podman's storage (DIR/root) and temporary state (DIR/tmp), its run state
// (and runc's) in a directory under /run named after DIR: two hosts on one machine never share a container database.
import * as crypto from 'node:crypto';
import * as path from 'node:path';
import { PhaulError } from '../errors';
import { which } from '../util/which';
import { type CmdResult, execCmd } from './runc';

export function findPodman(): string | undefined {
  return which('podman');
}

/**
 * The run state of the host whose state lives under `stateDir`: podman refuses
 * a run root longer than 50 characters, so it is a short name under /run
 * derived from the state directory rather than a directory inside it.
 */
export function podmanRunroot(stateDir: string): string {
  return `/run/phaul-podman-${crypto.createHash('sha256').update(path.resolve(stateDir)).digest('hex').slice(0, 16)}`;
}

/** podman's global flags for a host whose state lives under `stateDir` (none: podman's defaults). */
export function podmanGlobalArgs(stateDir?: string): string[] {
  // runc's own state too: two hosts on one machine must not share runc's record of a container either.
  const own = stateDir
    ? ['--root', path.join(stateDir, 'root'), '--runroot', podmanRunroot(stateDir), '--tmpdir', path.join(stateDir, 'tmp'),
      '--runtime-flag', `root=${path.join(podmanRunroot(stateDir), 'runc')}`]
    : [];
  // cgroupfs: no systemd scope per container (a test host has no systemd session for it); file events: no journald.
  return [...own, '--runtime', 'runc', '--cgroup-manager', 'cgroupfs', '--events-backend', 'file'];
}

/** The container fields of `podman container inspect` a migration uses. */
export interface PodmanContainer {
  id: string;
  name: string;
  pid: number;
  status: string;
  imageId: string;
  imageName: string;
  /** The OCI bundle podman gave its runtime (config.json and the rest of podman's per-container files). */
  bundle: string;
  /** The container's writable layer (overlay upper directory). */
  upperDir?: string;
  ociRuntime: string;
  /** podman's own graph root (its database is under it). */
  graphRoot: string;
}

/** The part of `podman container inspect` read here (podman 4's field names). */
interface InspectJson {
  Id?: unknown;
  Name?: unknown;
  State?: { Pid?: unknown; Status?: unknown };
  Image?: unknown;
  ImageName?: unknown;
  OCIConfigPath?: unknown;
  OCIRuntime?: unknown;
  GraphDriver?: { Data?: { UpperDir?: unknown } };
}

export class Podman {
  readonly bin: string;
  readonly env: NodeJS.ProcessEnv;

  /** `criuDir`: where the CRIU binary is, first on PATH for podman and runc. */
  constructor(readonly stateDir?: string, criuDir?: string, bin?: string) {
    const b = bin ?? findPodman();
    if (!b) throw new PhaulError('unavailable', 'podman is not installed (the Debian package podman)');
    this.bin = b;
    const PATH = [criuDir, process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'].filter(Boolean).join(':');
    this.env = { ...process.env, PATH };
  }

  /** podman's argv for `args` (for callers that must wrap it, e.g. in another network namespace). */
  argv(args: string[]): string[] {
    return [this.bin, ...podmanGlobalArgs(this.stateDir), ...args];
  }

  run(args: string[], timeoutMs = 60_000): Promise<CmdResult> {
    return execCmd(this.argv(args), timeoutMs, this.env);
  }

  /** The container, or undefined if this podman does not know it. */
  async inspect(id: string): Promise<PodmanContainer | undefined> {
    const r = await this.run(['container', 'inspect', id], 30_000);
    if (r.code !== 0) return undefined;
    let all: unknown;
    try {
      all = JSON.parse(r.stdout);
    } catch {
      throw new PhaulError('failed', `podman container inspect ${id} printed something that is not JSON`);
    }
    const c = (Array.isArray(all) ? all[0] : undefined) as InspectJson | undefined;
    if (!c || typeof c.Id !== 'string') return undefined;
    const info = await this.run(['info', '--format', '{{.Store.GraphRoot}}'], 30_000);
    return {
      id: c.Id,
      name: String(c.Name ?? ''),
      pid: Number(c.State?.Pid) || 0,
      status: String(c.State?.Status ?? ''),
      imageId: String(c.Image ?? ''),
      imageName: String(c.ImageName ?? ''),
      bundle: path.dirname(String(c.OCIConfigPath ?? '')),
      upperDir: typeof c.GraphDriver?.Data?.UpperDir === 'string' ? c.GraphDriver.Data.UpperDir : undefined,
      ociRuntime: String(c.OCIRuntime ?? ''),
      graphRoot: info.stdout.trim(),
    };
  }

  async imageExists(image: string): Promise<boolean> {
    return (await this.run(['image', 'exists', image], 30_000)).code === 0;
  }

  /** Kills and removes the container; true when podman no longer knows it. */
  async destroy(id: string): Promise<boolean> {
    const r = await this.run(['rm', '--force', '--time', '0', id], 60_000);
    return r.code === 0 || !(await this.inspect(id));
  }
}
