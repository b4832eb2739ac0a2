// The bundle copy's rounds (src/container/tree-sync.ts): a first round copies
// a tree, later rounds only its changes and deletions, and the receiving side
// refuses entries that would write outside their tree.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { TreeReceiver, TreeSender } from '../src/container/tree-sync';
import type { FrameConn, Message } from '../src/protocol/frames';

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'phaul-treesync-'));
}

/** Messages the sender would put on the wire, handed to a receiver. */
function pipeTo(rx: TreeReceiver): { conn: FrameConn; count: () => number } {
  let n = 0;
  const conn = { send: (m: Message) => { n++; rx.handle(m as any); } } as unknown as FrameConn;
  return { conn, count: () => n };
}

function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (rel: string) => {
    for (const name of fs.readdirSync(path.join(dir, rel)).sort()) {
      const p = rel ? `${rel}/${name}` : name;
      const st = fs.lstatSync(path.join(dir, p));
      if (st.isDirectory()) { out[p] = `d${st.mode & 0o7777}`; walk(p); }
      else if (st.isSymbolicLink()) out[p] = `l${fs.readlinkSync(path.join(dir, p))}`;
      else out[p] = `f${st.mode & 0o7777}:${fs.readFileSync(path.join(dir, p), 'hex')}`;
    }
  };
  walk('');
  return out;
}

test('rounds copy a tree, then only what changed, and deletions', () => {
  const src = tmp();
  const dst = tmp();
  try {
    fs.mkdirSync(path.join(src, 'etc/conf.d'), { recursive: true });
    fs.writeFileSync(path.join(src, 'etc/hosts'), '127.0.0.1 localhost\n');
    fs.writeFileSync(path.join(src, 'etc/conf.d/a'), Buffer.alloc(9 << 20, 7)); // more than one chunk
    fs.writeFileSync(path.join(src, 'empty'), '');
    fs.chmodSync(path.join(src, 'etc/hosts'), 0o640);
    fs.symlinkSync('/etc/hosts', path.join(src, 'link'));
    const tx = new TreeSender([{ name: 'rootfs', src }]);
    const rx = new TreeReceiver(new Map([['rootfs', dst]]));
    const wire = pipeTo(rx);
    const r1 = tx.round(wire.conn);
    assert.equal(r1.files, 2);
    assert.deepEqual(snapshot(dst), snapshot(src));

    const before = wire.count();
    const r2 = tx.round(wire.conn);
    assert.equal(r2.files, 0, 'nothing changed, nothing sent');
    assert.equal(wire.count() - before, 1, 'one empty entries message');

    fs.writeFileSync(path.join(src, 'etc/hosts'), '10.0.0.1 db\n');
    fs.utimesSync(path.join(src, 'etc/hosts'), 1, 1000);
    fs.rmSync(path.join(src, 'etc/conf.d'), { recursive: true });
    fs.writeFileSync(path.join(src, 'new'), 'x');
    const r3 = tx.round(wire.conn);
    assert.equal(r3.files, 2);
    assert.equal(r3.bytes, 13);
    assert.deepEqual(snapshot(dst), snapshot(src));
  } finally {
    fs.rmSync(src, { recursive: true, force: true });
    fs.rmSync(dst, { recursive: true, force: true });
  }
});

test('entries that would leave their tree are refused', () => {
  const dst = tmp();
  const outside = tmp();
  try {
    const rx = new TreeReceiver(new Map([['rootfs', dst]]));
    const entry = (p: string, k = 'f', extra: Record<string, unknown> = {}) =>
      ({ t: 'tree-entries', tree: 'rootfs', entries: [{ p, k, m: 0o644, u: 0, g: 0, s: 1, t: 0, ...extra }], deleted: [] });
    for (const bad of ['../x', '/etc/passwd', 'a/../../x', 'a//b', './x', 'x\0y']) {
      assert.throws(() => rx.handle(<any>entry(bad)), /bad path/, bad);
    }
    assert.throws(() => rx.handle(<any>{ t: 'tree-entries', tree: 'other', entries: [], deleted: [] }), /unknown tree/);
    assert.throws(() => rx.handle(<any>{ t: 'tree-entries', tree: 'rootfs', entries: [], deleted: ['../x'] }), /bad path/);
    // A symlink to outside, then a file "under" it: must not land outside.
    rx.handle(<any>entry('esc', 'l', { l: outside, s: 0 }));
    assert.throws(() => rx.handle(<any>entry('esc/owned')), /not a directory/);
    assert.deepEqual(fs.readdirSync(outside), []);
    // Data for a file never announced, and beyond the announced size.
    assert.throws(() => rx.handle(<any>{ t: 'tree-data', tree: 'rootfs', p: 'nope', data: Buffer.from('x') }), /not announced/);
    rx.handle(<any>entry('f'));
    assert.throws(() => rx.handle(<any>{ t: 'tree-data', tree: 'rootfs', p: 'f', data: Buffer.from('xy') }), /beyond/);
  } finally {
    fs.rmSync(dst, { recursive: true, force: true });
    fs.rmSync(outside, { recursive: true, force: true });
  }
});
