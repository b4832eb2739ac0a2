// Tokens, the handshake and the MAC on every frame after it, over real TCP
// sockets on loopback (no migration: the agents' tests do that).
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { authenticateClient, authenticateServer, MIN_TOKEN_CHARS, readToken } from '../src/protocol/auth';
import { encodeFrame, FrameConn, Message } from '../src/protocol/frames';
import { PhaulError } from '../src/errors';
import { CLI, tempDir, writeToken } from './helpers/agents';
import { runCmd } from '../src/testing/proc';

const TOKEN = Buffer.from('a'.repeat(64));
const OTHER = Buffer.from('b'.repeat(64));

/** A connected pair of loopback TCP sockets, raw. */
async function tcpPair(): Promise<{ client: net.Socket; server: net.Socket; close(): void }> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const accepted = new Promise<net.Socket>((r) => srv.once('connection', r));
  const client = net.connect((srv.address() as net.AddressInfo).port, '127.0.0.1');
  await new Promise<void>((r) => client.once('connect', () => r()));
  const server = await accepted;
  srv.close();
  return { client, server, close: () => { client.destroy(); server.destroy(); } };
}

function isCode(code: string) {
  return (e: unknown) => e instanceof PhaulError && e.code === code;
}

test('both sides authenticate and every later frame carries a MAC both ways', async () => {
  const p = await tcpPair();
  try {
    const c = new FrameConn(p.client, 'server');
    const s = new FrameConn(p.server, 'client');
    const [session, auth] = await Promise.all([
      authenticateClient(c, TOKEN, 'control'),
      authenticateServer(s, TOKEN).then((a) => { a.welcome('s1'); return a; }),
    ]);
    assert.equal(session, 's1');
    assert.equal(auth.role, 'control');
    assert.ok(c.authenticated && s.authenticated);
    c.send({ t: 'round', round: 1, batches: 2 });
    s.send({ t: 'image', name: 'pages-1.img', data: Buffer.alloc(1 << 20, 7) });
    assert.deepEqual(await s.next(2000), { t: 'round', round: 1, batches: 2, final: false });
    const image = await c.expect('image', 2000);
    assert.equal(image.data.length, 1 << 20);
  } finally {
    p.close();
  }
});

test('a caller without the token gets no proof from the server, and is refused', async () => {
  const p = await tcpPair();
  try {
    // Watch everything the server sends.
    const seen: Message[] = [];
    const c = new FrameConn(p.client, 'server');
    const s = new FrameConn(p.server, 'client');
    const orig = c.next.bind(c);
    c.next = async (ms?: number) => { const m = await orig(ms); seen.push(m); return m; };
    await Promise.all([
      assert.rejects(authenticateServer(s, TOKEN), isCode('auth')),
      assert.rejects(authenticateClient(c, OTHER, 'control'), isCode('auth')),
    ]);
    // The challenge holds a nonce and a key-exchange value, nothing derived from the token.
    assert.deepEqual(Object.keys(seen[0]).sort(), ['kx', 'nonce', 't']);
    assert.equal(seen[1].t, 'error');
    assert.ok(!seen.some((m) => 'proof' in m || 'mac' in m));
  } finally {
    p.close();
  }
});

test('a server without our token cannot complete the handshake', async () => {
  const p = await tcpPair();
  try {
    const c = new FrameConn(p.client, 'server');
    const s = new FrameConn(p.server, 'client');
    await Promise.all([
      assert.rejects(authenticateServer(s, OTHER), isCode('auth')),
      assert.rejects(authenticateClient(c, TOKEN, 'control'), isCode('auth')),
    ]);
  } finally {
    p.close();
  }
});

/** An authenticated pair with a man in the middle who can rewrite the client's bytes. */
async function relayed(rewrite: (chunk: Buffer, n: number) => Buffer | Buffer[]) {
  const left = await tcpPair();
  const right = await tcpPair();
  let tamper = false;
  let n = 0;
  left.server.on('data', (d: Buffer) => {
    const out = tamper ? rewrite(d, n++) : d;
    for (const b of Array.isArray(out) ? out : [out]) right.client.write(b);
  });
  right.client.on('data', (d: Buffer) => left.server.write(d));
  const c = new FrameConn(left.client, 'server');
  const s = new FrameConn(right.server, 'client');
  await Promise.all([authenticateClient(c, TOKEN, 'control'), authenticateServer(s, TOKEN).then((a) => a.welcome('x'))]);
  tamper = true;
  return { c, s, close: () => { left.close(); right.close(); } };
}

async function withRelay(rewrite: (chunk: Buffer, n: number) => Buffer | Buffer[],
                         fn: (r: { c: FrameConn; s: FrameConn }) => Promise<void>): Promise<void> {
  const r = await relayed(rewrite);
  try {
    await fn(r);
  } finally {
    r.close();
  }
}

const integrity = (e: unknown) => isCode('protocol')(e) && /integrity/.test((e as Error).message);

test('a frame altered, injected or replayed after the handshake ends the connection', async () => {
  // One bit flipped in the body.
  await withRelay((d) => { const b = Buffer.from(d); b[b.length - 20] ^= 1; return b; }, async ({ c, s }) => {
    c.send({ t: 'image', name: 'core-1.img', data: Buffer.alloc(40, 1) });
    await assert.rejects(s.next(2000), integrity);
  });
  // A frame injected by someone who relayed the handshake but has no key.
  await withRelay((d) => [encodeFrame({ t: 'commit' }), d], async ({ c, s }) => {
    c.send({ t: 'abort', message: 'x' });
    await assert.rejects(s.next(2000), integrity);
  });
  // A genuine frame sent twice.
  await withRelay((d) => [d, d], async ({ c, s }) => {
    c.send({ t: 'image', name: 'x', data: Buffer.alloc(1) });
    assert.equal((await s.next(2000)).t, 'image');
    await assert.rejects(s.next(2000), integrity);
  });
});

test('readToken refuses exposed and short tokens, saying how to fix it', () => {
  const dir = tempDir('token');
  try {
    const open = path.join(dir, 'open');
    fs.writeFileSync(open, 'x'.repeat(64), { mode: 0o644 });
    fs.chmodSync(open, 0o644);
    assert.throws(() => readToken(open), (e: unknown) => isCode('usage')(e) && /readable by group or others .*chmod 600/.test((e as Error).message));
    const short = path.join(dir, 'short');
    fs.writeFileSync(short, 'passwordpassword\n', { mode: 0o600 });
    assert.throws(() => readToken(short), (e: unknown) => isCode('usage')(e) && /too short.*phaul-fast token/.test((e as Error).message));
    const ok = writeToken(dir, 'z'.repeat(MIN_TOKEN_CHARS));
    assert.equal(readToken(ok).length, MIN_TOKEN_CHARS);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('phaul-fast token writes 256 random bits with mode 0600 and never overwrites by accident', async () => {
  const dir = tempDir('token-cmd');
  try {
    const f = path.join(dir, 'tok');
    const r = await runCmd([process.execPath, CLI, 'token', '--out', f]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(fs.statSync(f).mode & 0o777, 0o600);
    const t = fs.readFileSync(f, 'utf8').trim();
    assert.match(t, /^[0-9a-f]{64}$/);
    assert.equal(readToken(f).toString(), t);
    const again = await runCmd([process.execPath, CLI, 'token', '--out', f]);
    assert.equal(again.code, 2);
    assert.match(again.stderr, /exists/);
    assert.equal(again.stderr.trim().split('\n').length, 1);
    const forced = await runCmd([process.execPath, CLI, 'token', '--out', f, '--force']);
    assert.equal(forced.code, 0);
    assert.notEqual(fs.readFileSync(f, 'utf8').trim(), t);
    // serve refuses an exposed token with one line and the usage exit code.
    fs.chmodSync(f, 0o640);
    const serve = await runCmd([process.execPath, CLI, 'serve', '--listen', '127.0.0.1:1', '--dir', dir, '--token-file', f]);
    assert.equal(serve.code, 2);
    assert.match(serve.stderr, /^phaul-fast serve: token file .* is readable by group or others \(mode 640\): run chmod 600 /);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
