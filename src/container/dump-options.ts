// The CRIU dump options runc itself uses for a container (runc 1.1's
// `runc checkpoint`), so that the destination's `runc restore` accepts the
// images as its own: the container's root, its bind mounts, masked paths and
// devices as external mounts (masked directories too, unlike runc: see
// tmpfsMounts' caller), an external network namespace when it joined
// one, cgroups managed by CRIU, the container's freezer, and the stdio file
// list runc reads back on restore (descriptors.json).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { devicePathsOf, isBindMount, maskedPathsOf, mountsOf, namespacePath, OciConfig } from './oci';

export interface ContainerDumpOptions {
  root: string;
  external: string[];
  freezeCgroup?: string;
  manageCgroups: true;
  orphanPtsMaster: true;
}

/** Where a mount destination lands inside the rootfs, as CRIU keys it ('/data', never '../'). */
function inContainer(dest: string): string {
  return path.posix.normalize('/' + dest);
}

function unifiedCgroups(): boolean {
  return fs.existsSync('/sys/fs/cgroup/cgroup.controllers');
}

/** Where this host mounts its cgroup v1 hierarchies. */
function cgroupV1Mounts(): string[] {
  let text = '';
  try { text = fs.readFileSync('/proc/self/mountinfo', 'utf8'); } catch { return []; }
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const [pre, post] = line.split(' - ');
    if (!post || post.split(' ')[0] !== 'cgroup') continue;
    out.push(pre.split(' ')[4]);
  }
  return out;
}

/** The external-mount key of a masked directory: the destination maps it to an empty directory (target.ts). */
export const MASKED_DIR_KEY = 'phaul-fast-masked-dir';

/** The container's tmpfs mounts, mountpoint (as the container sees it) -> 'ro' or 'rw'. */
function tmpfsMounts(pid: number): Map<string, 'ro' | 'rw'> {
  const out = new Map<string, 'ro' | 'rw'>();
  let text = '';
  try { text = fs.readFileSync(`/proc/${pid}/mountinfo`, 'utf8'); } catch { return out; }
  for (const line of text.split('\n')) {
    const [pre, post] = line.split(' - ');
    if (!post || post.split(' ')[0] !== 'tmpfs') continue;
    const f = pre.split(' ');
    out.set(f[4].replace(/\\040/g, ' '), f[5].split(',').includes('ro') ? 'ro' : 'rw');
  }
  return out;
}

/** The container's freezer cgroup directory (cgroup v1 freezer, else its v2 cgroup). */
export function freezerOf(pid: number): string | undefined {
  let lines: string[];
  try {
    lines = fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8').trim().split('\n');
  } catch {
    return undefined;
  }
  const v1 = lines.find((l) => l.split(':')[1]?.split(',').includes('freezer'));
  if (v1 && fs.existsSync('/sys/fs/cgroup/freezer')) return path.join('/sys/fs/cgroup/freezer', v1.split(':').slice(2).join(':'));
  const v2 = lines.find((l) => l.startsWith('0::'));
  if (v2 && fs.existsSync('/sys/fs/cgroup/cgroup.controllers')) return path.join('/sys/fs/cgroup', v2.slice(3));
  return undefined;
}

export function containerDumpOptions(cfg: OciConfig, rootfs: string, pid: number): ContainerDumpOptions {
  const external: string[] = [];
  const mnt = (key: string, val: string) => external.push(`mnt[${key}]:${val}`);
  const cgroupns = !!(Array.isArray(cfg.linux?.namespaces) && cfg.linux.namespaces.some((n) => n?.type === 'cgroup'));
  for (const m of mountsOf(cfg)) {
    if (isBindMount(m)) mnt(inContainer(m.destination), inContainer(m.destination));
    // cgroup v1 without a cgroup namespace: runc bind-mounts each hierarchy of the host.
    if (m.type === 'cgroup' && !cgroupns && !unifiedCgroups()) {
      for (const h of cgroupV1Mounts()) mnt(inContainer(path.posix.join(m.destination, path.basename(h))), inContainer(path.posix.join(m.destination, path.basename(h))));
    }
  }
  const tmpfs = tmpfsMounts(pid);
  for (const p of maskedPathsOf(cfg)) {
    // runc masks files with /dev/null and directories with an empty read-only
    // tmpfs. CRIU would archive each such tmpfs with tar and unpack it on
    // restore (two processes each way, inside the pause): an empty one is an
    // external mount instead, which the restore binds from an empty directory.
    try {
      if (!fs.statSync(`/proc/${pid}/root${inContainer(p)}`).isDirectory()) mnt(inContainer(p), '/dev/null');
      else if (tmpfs.get(inContainer(p)) === 'ro') mnt(inContainer(p), MASKED_DIR_KEY);
    } catch { /* not in this container */ }
  }
  for (const d of devicePathsOf(cfg)) mnt(inContainer(d), inContainer(d));
  const netns = namespacePath(cfg, 'network');
  if (netns) external.push(`net[${fs.statSync(netns).ino}]:extRootNetNS`);
  return { root: rootfs, external, freezeCgroup: freezerOf(pid), manageCgroups: true, orphanPtsMaster: true };
}

/** runc's descriptors.json: what the container's init has as fds 0-2 (runc re-plumbs pipes on restore). */
export function writeDescriptors(imagesDir: string, pid: number): void {
  const fds = [0, 1, 2].map((fd) => {
    try {
      return fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      return '/dev/null';
    }
  });
  fs.writeFileSync(path.join(imagesDir, 'descriptors.json'), JSON.stringify(fds), { mode: 0o600 });
}

/** The same options as `criu dump` arguments (the lazy dump runs CRIU's command line). */
export function containerDumpArgs(o: ContainerDumpOptions): string[] {
  // (orphan-pts-master exists only over RPC; it matters to containers with a terminal, which are refused.)
  const args = ['--root', o.root, '--manage-cgroups', '--network-lock', 'nftables'];
  for (const e of o.external) args.push('--external', e);
  if (o.freezeCgroup) args.push('--freeze-cgroup', o.freezeCgroup);
  return args;
}
