// runc through its command line: the one interface runc promises to keep.
// The source reads a container's state and deletes it after the commit; the
// destination restores into it (`runc restore`), so that its runc owns the
// restored container exactly as one it checkpointed and restored itself.
import { execFile } from 'node:child_process';
import { PhaulError } from '../errors';
import { which } from '../util/which';

/** A container id runc accepts (libcontainer's rule), and nothing that could be a path. */
export const CONTAINER_ID = /^[A-Za-z0-9][A-Za-z0-9_+.-]{0,127}$/;

export const RUNC_DEFAULT_ROOT = '/run/runc';

export interface RuncState {
  id: string;
  pid: number;
  status: string;
  bundle: string;
}

export interface CmdResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command without a shell; never rejects (a missing binary is code 127). */
export function execCmd(argv: string[], timeoutMs = 60_000, env?: NodeJS.ProcessEnv): Promise<CmdResult> {
  return new Promise((resolve) => {
    execFile(argv[0], argv.slice(1), { timeout: timeoutMs, maxBuffer: 16 << 20, env }, (err, stdout, stderr) => {
      const e = err as (NodeJS.ErrnoException & { code?: number | string }) | null;
      const code = !e ? 0 : typeof e.code === 'number' ? e.code : e.code === 'ENOENT' ? 127 : 1;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) || (e && !stderr ? e.message : '') });
    });
  });
}

/** runc's own message from its stderr (it logs `level=error msg="..."`), one line. */
export function runcMessage(stderr: string): string {
  const msgs = [...stderr.matchAll(/msg="((?:[^"\\]|\\.)*)"/g)].map((m) => m[1].replace(/\\"/g, '"').replace(/\\n/g, ' '));
  const text = msgs.length ? msgs[msgs.length - 1] : stderr.trim().split('\n').pop() ?? '';
  return text.slice(0, 400);
}

export function findRunc(): string | undefined {
  return which('runc');
}

export class Runc {
  readonly bin: string;

  constructor(readonly root: string = RUNC_DEFAULT_ROOT, bin?: string) {
    const b = bin ?? findRunc();
    if (!b) throw new PhaulError('unavailable', 'runc is not installed (the Debian package runc)');
    this.bin = b;
  }

  private run(args: string[], timeoutMs?: number): Promise<CmdResult> {
    return execCmd([this.bin, '--root', this.root, ...args], timeoutMs);
  }

  /** The container's state, or undefined if runc does not know it. */
  async state(id: string): Promise<RuncState | undefined> {
    const r = await this.run(['state', id], 20_000);
    if (r.code !== 0) return undefined;
    let s: Record<string, unknown>;
    try {
      s = JSON.parse(r.stdout);
    } catch {
      throw new PhaulError('failed', `runc state ${id} printed something that is not JSON`);
    }
    return { id, pid: Number(s.pid) || 0, status: String(s.status ?? ''), bundle: String(s.bundle ?? '') };
  }

  /**
   * `runc restore -d`: CRIU restores the images into a container runc creates
   * from the bundle, with the CRIU configuration file the bundle names (ours:
   * it leaves the tree stopped until the commit).
   */
  async restore(o: { id: string; bundle: string; imagesDir: string; workDir: string; criu: string;
    flags: string[]; timeoutMs: number }): Promise<void> {
    const r = await execCmd([this.bin, '--root', this.root, '--criu', o.criu, 'restore', '--detach',
      '--image-path', o.imagesDir, '--work-path', o.workDir, '--bundle', o.bundle, ...o.flags, o.id], o.timeoutMs);
    if (r.code !== 0) throw new PhaulError('criu', `runc restore failed: ${runcMessage(r.stderr) || `exit ${r.code}`}`);
  }

  /** Kills and deletes the container; true when runc no longer knows it. */
  async destroy(id: string): Promise<boolean> {
    await this.run(['kill', id, 'KILL'], 20_000);
    const r = await this.run(['delete', '--force', id], 30_000);
    return r.code === 0 || !(await this.state(id));
  }
}
