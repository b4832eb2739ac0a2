// File-level delta copy of directory trees (a container's rootfs, its volumes)
// over the control connection, in rounds: the first round sends everything,
// each later one what changed since (size, mtime, mode, owner, kind, link
// target) and what disappeared. The source keeps the state; the destination
// applies what it is told and trusts none of it: paths stay inside their
// tree, no write ever follows a symlink, and sizes are what was announced.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PhaulError } from '../errors';
import type { FrameConn } from '../protocol/frames';
import type { TreeData, TreeEntries } from '../protocol/messages';

export interface TreeEntry {
  /** Path inside the tree, '/'-separated; '' is the tree's root (a single-file tree). */
  p: string;
  k: 'f' | 'd' | 'l';
  m: number;
  u: number;
  g: number;
  s: number;
  t: number;
  l?: string;
}

export interface SyncTree {
  /** Names the tree on the wire: 'rootfs', 'volume-0', ... */
  name: string;
  src: string;
}

const CHUNK = 8 << 20;
const BATCH = 2000;
const MAX_PATH = 4096;
export const TREE_NAME = /^(rootfs|volume-\d{1,4})$/;

function sig(e: TreeEntry): string {
  return `${e.k}:${e.m}:${e.u}:${e.g}:${e.s}:${e.t}:${e.l ?? ''}`;
}

function entryOf(full: string, p: string, st: fs.Stats): TreeEntry | undefined {
  const kind = st.isDirectory() ? 'd' : st.isFile() ? 'f' : st.isSymbolicLink() ? 'l' : undefined;
  if (!kind) return undefined; // device nodes, fifos, sockets: a rootfs has none worth moving
  const e: TreeEntry = { p, k: kind, m: st.mode & 0o7777, u: st.uid, g: st.gid, s: kind === 'f' ? st.size : 0, t: Math.floor(st.mtimeMs) };
  if (kind === 'l') e.l = fs.readlinkSync(full);
  return e;
}

/** Every entry of the tree, parents before children. */
function walk(root: string): TreeEntry[] {
  const out: TreeEntry[] = [];
  const top = fs.lstatSync(root);
  if (!top.isDirectory()) {
    const e = entryOf(root, '', top);
    if (e) out.push(e);
    return out;
  }
  const stack = [''];
  while (stack.length) {
    const rel = stack.pop()!;
    let names: string[];
    try {
      names = fs.readdirSync(path.join(root, rel));
    } catch {
      continue; // vanished while we walked: the next round sees it gone
    }
    for (const name of names.sort()) {
      const p = rel ? `${rel}/${name}` : name;
      const full = path.join(root, p);
      let st: fs.Stats;
      try { st = fs.lstatSync(full); } catch { continue; }
      const e = entryOf(full, p, st);
      if (!e) continue;
      out.push(e);
      if (e.k === 'd') stack.push(p);
    }
  }
  return out;
}

/** Source side: remembers what the destination holds and sends the difference. */
export class TreeSender {
  private readonly sent = new Map<string, Map<string, string>>();
  rounds = 0;
  bytes = 0;

  constructor(readonly trees: SyncTree[]) {}

  /** One round over every tree; returns the files and bytes it sent. */
  round(conn: FrameConn): { files: number; bytes: number } {
    let files = 0;
    let bytes = 0;
    for (const tree of this.trees) {
      const before = this.sent.get(tree.name) ?? new Map<string, string>();
      const now = new Map<string, string>();
      const changed: TreeEntry[] = [];
      for (const e of walk(tree.src)) {
        const s = sig(e);
        now.set(e.p, s);
        if (before.get(e.p) !== s) changed.push(e);
      }
      const deleted = [...before.keys()].filter((p) => !now.has(p)).sort().reverse();
      for (let i = 0; i === 0 || i < Math.max(changed.length, deleted.length); i += BATCH) {
        conn.send({ t: 'tree-entries', tree: tree.name, entries: changed.slice(i, i + BATCH), deleted: deleted.slice(i, i + BATCH) });
        for (const e of changed.slice(i, i + BATCH)) {
          if (e.k !== 'f' || e.s === 0) continue;
          const sentBytes = this.sendFile(conn, tree.name, path.join(tree.src, e.p), e);
          bytes += sentBytes;
          files++;
          // A file that changed size while we read it goes again next round.
          if (sentBytes !== e.s) now.set(e.p, 'changed');
        }
      }
      this.sent.set(tree.name, now);
    }
    this.rounds++;
    this.bytes += bytes;
    return { files, bytes };
  }

  private sendFile(conn: FrameConn, tree: string, full: string, e: TreeEntry): number {
    let fd: number;
    try {
      fd = fs.openSync(full, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    } catch {
      return 0;
    }
    let off = 0;
    try {
      const buf = Buffer.allocUnsafe(Math.min(CHUNK, e.s));
      while (off < e.s) {
        const n = fs.readSync(fd, buf, 0, Math.min(buf.length, e.s - off), off);
        if (n <= 0) break;
        conn.send({ t: 'tree-data', tree, p: e.p, data: Buffer.from(buf.subarray(0, n)) });
        off += n;
      }
    } finally {
      fs.closeSync(fd);
    }
    return off;
  }
}

/** A path from the wire, checked: relative, normalized, inside its tree. */
function checkedPath(p: string): string {
  if (p.length > MAX_PATH || p.includes('\0') || p.startsWith('/')) throw new PhaulError('protocol', 'bad path in a tree entry');
  if (p === '') return p;
  const parts = p.split('/');
  if (parts.some((x) => x === '' || x === '.' || x === '..')) throw new PhaulError('protocol', `bad path '${p.slice(0, 80)}' in a tree entry`);
  return p;
}

function parseEntry(raw: unknown): TreeEntry {
  const m = raw as Record<string, unknown>;
  const bad = (what: string) => new PhaulError('protocol', `bad tree entry (${what})`);
  if (!m || typeof m !== 'object') throw bad('not a map');
  const num = (k: string, max: number) => {
    const v = m[k];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > max) throw bad(k);
    return v;
  };
  const k = m.k;
  if (k !== 'f' && k !== 'd' && k !== 'l') throw bad('kind');
  if (typeof m.p !== 'string') throw bad('path');
  const e: TreeEntry = { p: checkedPath(m.p), k, m: num('m', 0o7777), u: num('u', 2 ** 32 - 1), g: num('g', 2 ** 32 - 1), s: num('s', 2 ** 46), t: num('t', 2 ** 50) };
  if (k === 'l') {
    if (typeof m.l !== 'string' || m.l.length > MAX_PATH || m.l.includes('\0')) throw bad('link');
    e.l = m.l;
  }
  return e;
}

/** Destination side: applies rounds under one directory (or file) per tree. */
export class TreeReceiver {
  /** Files announced in this round whose bytes are still arriving: path -> [bytes expected, received]. */
  private readonly pending = new Map<string, { size: number; got: number; t: number }>();
  bytes = 0;

  /** `roots`: tree name -> where it lands (a directory tree's root directory is created here). */
  constructor(readonly roots: Map<string, string>) {}

  private root(m: TreeEntries | TreeData): { name: string; dir: string } {
    const name = m.tree;
    const dir = this.roots.get(name);
    if (!dir) throw new PhaulError('protocol', `unknown tree '${name.slice(0, 32)}'`);
    return { name, dir };
  }

  /** The destination path of `p`, after checking that no parent is a symlink (a write must not leave the tree). */
  private target(dir: string, p: string): string {
    if (p === '') return dir;
    const parts = p.split('/');
    let cur = dir;
    for (const part of parts.slice(0, -1)) {
      cur = path.join(cur, part);
      const st = fs.lstatSync(cur, { throwIfNoEntry: false });
      if (!st || !st.isDirectory()) throw new PhaulError('protocol', `tree entry '${p.slice(0, 80)}' lies under something that is not a directory`);
    }
    return path.join(dir, p);
  }

  handle(m: TreeEntries | TreeData): void {
    if (m.t === 'tree-entries') this.entries(m);
    else this.data(m);
  }

  private entries(m: TreeEntries): void {
    const { name, dir } = this.root(m);
    const entries = m.entries;
    const deleted = m.deleted;
    if (!Array.isArray(entries) || entries.length > BATCH || !Array.isArray(deleted) || deleted.length > BATCH) throw new PhaulError('protocol', 'bad tree entries');
    for (const d of deleted) {
      if (typeof d !== 'string') throw new PhaulError('protocol', 'bad deleted path');
      const p = checkedPath(d);
      if (p === '') continue;
      fs.rmSync(this.target(dir, p), { recursive: true, force: true });
    }
    for (const raw of entries) {
      const e = parseEntry(raw);
      const full = this.target(dir, e.p);
      const st = fs.lstatSync(full, { throwIfNoEntry: false });
      if (e.k === 'd') {
        if (st && !st.isDirectory()) fs.rmSync(full, { force: true });
        if (!st || !st.isDirectory()) fs.mkdirSync(full);
        fs.chmodSync(full, e.m);
        fs.lchownSync(full, e.u, e.g);
        continue;
      }
      if (st) fs.rmSync(full, { recursive: true, force: true });
      if (e.k === 'l') {
        fs.symlinkSync(e.l!, full);
        fs.lchownSync(full, e.u, e.g);
        continue;
      }
      const fd = fs.openSync(full, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o600);
      try {
        fs.fchownSync(fd, e.u, e.g);
        fs.fchmodSync(fd, e.m); // after chown, which clears set-id bits
        if (e.s === 0) fs.futimesSync(fd, e.t / 1000, e.t / 1000);
      } finally {
        fs.closeSync(fd);
      }
      if (e.s > 0) this.pending.set(`${name}\0${e.p}`, { size: e.s, got: 0, t: e.t });
    }
  }

  private data(m: TreeData): void {
    const { name, dir } = this.root(m);
    const p = checkedPath(m.p);
    const key = `${name}\0${p}`;
    const f = this.pending.get(key);
    if (!f) throw new PhaulError('protocol', `data for a file that was not announced`);
    const data = m.data;
    if (data.length > CHUNK || f.got + data.length > f.size) throw new PhaulError('protocol', 'tree data beyond the announced size');
    const fd = fs.openSync(this.target(dir, p), fs.constants.O_WRONLY | fs.constants.O_APPEND | fs.constants.O_NOFOLLOW);
    try {
      fs.writeSync(fd, data);
      f.got += data.length;
      if (f.got === f.size) {
        fs.futimesSync(fd, f.t / 1000, f.t / 1000);
        this.pending.delete(key);
      }
    } finally {
      fs.closeSync(fd);
    }
    this.bytes += data.length;
  }
}
