// runc containers for tests and the bench, with no registry: a bundle is a
// rootfs directory (busybox-static plus the project's workloads built
// -static) and a config.json from `runc spec`, edited. Each "host" has its own
// runc --root, bundle directory and cgroup parent.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { PACKAGE_ROOT as PROJECT_ROOT } from '../package-root';
import { PhaulError } from '../errors';
import { findRunc } from '../container/runc';
import { isAlive, runCmd, signal, sleep, waitGone } from './proc';
import type { MemReport } from './workload';

export const STATIC_DIR = path.join(PROJECT_ROOT, 'build', 'workloads', 'static');
const BUSYBOX = '/bin/busybox';
const APPLETS = ['sh', 'sleep', 'cat', 'ls', 'ps', 'echo', 'nc', 'ip', 'true'];

export function runcAvailable(): string | undefined {
  if (!findRunc()) return 'runc is not installed (scripts/setup.sh installs the Debian package)';
  if (!fs.existsSync(BUSYBOX)) return 'busybox-static is not installed (scripts/setup.sh installs it)';
  return undefined;
}

/** A workload from test/workloads built -static (setup builds them; compiled here if missing or stale). */
export async function staticWorkload(name: string): Promise<string> {
  const src = path.join(PROJECT_ROOT, 'test', 'workloads', `${name}.c`);
  const out = path.join(STATIC_DIR, name);
  const mtime = (p: string) => { try { return fs.statSync(p).mtimeMs; } catch { return -1; } };
  if (mtime(out) > 0 && mtime(out) >= mtime(src)) return out;
  fs.mkdirSync(STATIC_DIR, { recursive: true });
  const tmp = `${out}.${process.pid}.tmp`;
  const r = await runCmd(['gcc', '-O2', '-static', '-o', tmp, src, '-lpthread'], { timeoutMs: 120_000 });
  if (r.code !== 0) throw new PhaulError('unavailable', `cannot build ${name} -static: ${r.stderr.trim().slice(0, 300)}`);
  fs.renameSync(tmp, out);
  return out;
}

export interface BundleOptions {
  /** The bundle directory (created; its rootfs inside). */
  dir: string;
  args: string[];
  cgroupsPath: string;
  /** Static workloads copied to /bin. */
  workloads?: string[];
  /** Join this network namespace (a path) instead of getting a new one. */
  netnsPath?: string;
  /** Extra OCI mounts (e.g. a volume). */
  mounts?: Record<string, unknown>[];
  /** config.json memory limit, bytes. */
  memoryLimit?: number;
  pidsLimit?: number;
}

/** A registry-free rootfs: busybox-static and its applets, plus static workloads in /bin. */
export async function makeRootfs(rootfs: string, workloads: string[] = []): Promise<void> {
  for (const d of ['bin', 'proc', 'sys', 'dev', 'tmp', 'etc', 'data']) fs.mkdirSync(path.join(rootfs, d), { recursive: true });
  fs.copyFileSync(BUSYBOX, path.join(rootfs, 'bin', 'busybox'));
  fs.chmodSync(path.join(rootfs, 'bin', 'busybox'), 0o755);
  for (const a of APPLETS) fs.symlinkSync('busybox', path.join(rootfs, 'bin', a));
  for (const w of workloads) {
    const bin = await staticWorkload(w);
    fs.copyFileSync(bin, path.join(rootfs, 'bin', w));
    fs.chmodSync(path.join(rootfs, 'bin', w), 0o755);
  }
}

export async function makeBundle(o: BundleOptions): Promise<string> {
  await makeRootfs(path.join(o.dir, 'rootfs'), o.workloads);
  const r = await runCmd([findRunc()!, 'spec', '--bundle', o.dir], { timeoutMs: 20_000 });
  if (r.code !== 0) throw new PhaulError('failed', `runc spec: ${r.stderr.trim()}`);
  const file = path.join(o.dir, 'config.json');
  const c = JSON.parse(fs.readFileSync(file, 'utf8'));
  c.process.terminal = false;
  c.process.args = o.args;
  c.root.readonly = false;
  c.linux.cgroupsPath = o.cgroupsPath;
  if (o.netnsPath) c.linux.namespaces = c.linux.namespaces.map((n: { type: string }) => (n.type === 'network' ? { type: 'network', path: o.netnsPath } : n));
  if (o.mounts) c.mounts.push(...o.mounts);
  const resources: Record<string, unknown> = { ...(c.linux.resources ?? {}) };
  if (o.memoryLimit) resources.memory = { limit: o.memoryLimit };
  if (o.pidsLimit) resources.pids = { limit: o.pidsLimit };
  c.linux.resources = resources;
  fs.writeFileSync(file, JSON.stringify(c, null, 2));
  return o.dir;
}

/**
 * `runc run -d` (optionally inside a host's network namespace); resolves with
 * the init's host pid. The container's stdio is /dev/null: a pipe to us would
 * stay open as long as the container runs, and CRIU would have to move it.
 * runc's errors go to its --log file.
 */
export async function runContainer(runcRoot: string, bundle: string, id: string, netns?: string | null): Promise<number> {
  fs.mkdirSync(runcRoot, { recursive: true });
  const log = path.join(runcRoot, `run-${id}.log`);
  const argv = [...(netns ? ['nsenter', `--net=${netns}`] : []), findRunc()!, '--root', runcRoot, '--log', log,
    'run', '--detach', '--bundle', bundle, id];
  const code = await new Promise<number | null>((resolve) => {
    const p = spawn(argv[0], argv.slice(1), { stdio: 'ignore' });
    const t = setTimeout(() => p.kill('SIGKILL'), 30_000);
    p.on('exit', (c) => { clearTimeout(t); resolve(c); });
    p.on('error', () => { clearTimeout(t); resolve(null); });
  });
  if (code !== 0) {
    let why = '';
    try { why = fs.readFileSync(log, 'utf8').trim().split('\n').pop() ?? ''; } catch { /* none */ }
    throw new PhaulError('failed', `runc run ${id} exited ${code}: ${why}`);
  }
  return containerPid(runcRoot, id);
}

/** The container's state as runc says it, or null. */
export async function runcState(runcRoot: string, id: string): Promise<{ pid: number; status: string; bundle: string } | null> {
  const r = await runCmd([findRunc()!, '--root', runcRoot, 'state', id], { timeoutMs: 20_000 });
  if (r.code !== 0) return null;
  return JSON.parse(r.stdout);
}

export async function containerPid(runcRoot: string, id: string): Promise<number> {
  const s = await runcState(runcRoot, id);
  if (!s || !s.pid) throw new PhaulError('notFound', `runc does not know ${id}`);
  return s.pid;
}

/** Kills and deletes a container if runc knows it, then removes the cgroup directories left under `cgroupParent`. */
export async function removeContainer(runcRoot: string, id: string): Promise<void> {
  const runc = findRunc()!;
  const s = await runcState(runcRoot, id);
  if (s) {
    await runCmd([runc, '--root', runcRoot, 'kill', id, 'KILL'], { timeoutMs: 20_000 });
    if (s.pid) await waitGone(s.pid, 5000);
    await runCmd([runc, '--root', runcRoot, 'delete', '--force', id], { timeoutMs: 20_000 });
  }
}

export function removeCgroups(cgroupParent: string): void {
  let ctrls: string[] = [];
  try { ctrls = fs.readdirSync('/sys/fs/cgroup'); } catch { return; }
  for (const c of ['', ...ctrls]) {
    const dir = path.join('/sys/fs/cgroup', c, cgroupParent);
    if (!fs.existsSync(dir)) continue;
    // Children first (rmdir only: a cgroup directory holds no files to delete).
    const subdirs = fs.readdirSync(dir, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => path.join(dir, e.name));
    for (const d of subdirs) { try { fs.rmdirSync(d); } catch { /* in use */ } }
    try { fs.rmdirSync(dir); } catch { /* in use */ }
  }
}

/** memwork's report inside a container's rootfs, after asking `pid` (the container's init, as the host sees it) for one. */
export async function containerMemReport(pid: number, reportFile: string, timeoutMs = 20_000): Promise<MemReport> {
  const read = (): MemReport | null => { try { return JSON.parse(fs.readFileSync(reportFile, 'utf8')); } catch { return null; } };
  const before = read()?.seq ?? 0;
  if (!signal(pid, 'SIGUSR1')) throw new PhaulError('notFound', `container init ${pid} is gone`);
  const end = Date.now() + timeoutMs;
  for (;;) {
    const r = read();
    if (r && r.seq > before) return r;
    if (!isAlive(pid)) throw new PhaulError('notFound', `container init ${pid} died before reporting`);
    if (Date.now() > end) throw new PhaulError('failed', `no report from ${pid} within ${timeoutMs} ms`);
    await sleep(10);
  }
}

/** Waits for memwork's first (ready) report in the rootfs. */
export async function waitMemReady(pid: number, reportFile: string, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (JSON.parse(fs.readFileSync(reportFile, 'utf8')).seq >= 1) return;
    } catch { /* not yet */ }
    if (!isAlive(pid)) throw new PhaulError('failed', `container init ${pid} died before it was ready`);
    if (Date.now() > end) throw new PhaulError('failed', `container workload not ready within ${timeoutMs} ms`);
    await sleep(20);
  }
}
