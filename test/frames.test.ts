// The control channel's framing and its refusal of bad peer data.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { Packr } from 'msgpackr';
import { encodeFrame, FrameConn, FrameSplitter, MAX_FRAME, MAX_UNAUTH_BUFFERED, MAX_UNAUTH_FRAME } from '../src/protocol/frames';
import { ExitCode, PhaulError } from '../src/errors';

function conn() {
  const wire = new PassThrough();
  return { wire, c: new FrameConn(wire, 'peer') };
}

test('a message round-trips, several per chunk and split across chunks', async () => {
  const { wire, c } = conn();
  const a = encodeFrame({ t: 'round-ack', round: 1 });
  const b = encodeFrame({ t: 'image', name: 'core-1.img', data: Buffer.from([1, 2, 3]) });
  const both = Buffer.concat([a, b]);
  wire.write(both.subarray(0, 3));
  wire.write(both.subarray(3, a.length + 5));
  wire.write(both.subarray(a.length + 5));
  assert.deepEqual(await c.next(1000), { t: 'round-ack', round: 1 });
  const m = await c.expect('image', 1000);
  assert.deepEqual([...m.data], [1, 2, 3]);
});

test('an error from the peer keeps a known code and never an unknown one', async () => {
  const { wire, c } = conn();
  wire.write(encodeFrame({ t: 'error', code: 'auth', message: 'no' }));
  await assert.rejects(c.expect('welcome', 1000), (e: unknown) => e instanceof PhaulError && e.code === 'auth' && e.exitCode === ExitCode.auth);
  wire.write(encodeFrame({ t: 'error', code: 'constructor', message: 'x\n  at evil' }));
  await assert.rejects(c.expect('welcome', 1000), (e: unknown) =>
    e instanceof PhaulError && e.code === 'failed' && e.exitCode === ExitCode.failed && !e.message.includes('\n'));
});

test('an oversized frame, a non-message and a wrong type are protocol errors', async () => {
  for (const len of [MAX_UNAUTH_FRAME + 1, MAX_FRAME + 1, 64 * 1024 * 1024]) {
    const { wire, c } = conn();
    const head = Buffer.alloc(4);
    head.writeUInt32BE(len);
    wire.write(head);
    await assert.rejects(c.next(1000), (e: unknown) => e instanceof PhaulError && e.code === 'protocol' && /limit 4096/.test(e.message));
  }
  {
    // Many small frames before authentication: the unread bytes are capped too.
    const { wire, c } = conn();
    for (let i = 0; i * 1000 <= MAX_UNAUTH_BUFFERED; i++) wire.write(encodeFrame({ t: 'hello', pad: 'x'.repeat(1000) }));
    await new Promise((r) => setImmediate(r));
    await assert.rejects(c.expect('commit', 1000), (e: unknown) => e instanceof PhaulError && e.code === 'protocol');
  }
  {
    const { wire, c } = conn();
    const body = new Packr().pack([1, 2, 3]);
    const head = Buffer.alloc(4);
    head.writeUInt32BE(body.length);
    wire.write(Buffer.concat([head, body]));
    await assert.rejects(c.next(1000), (e: unknown) => e instanceof PhaulError && e.code === 'protocol');
  }
  {
    const { wire, c } = conn();
    wire.write(encodeFrame({ t: 'surprise' }));
    await assert.rejects(c.expect('caps', 1000), (e: unknown) => e instanceof PhaulError && e.code === 'protocol');
  }
});

test('a message the validator refuses fails that read only: the receiver can still say why', async () => {
  const { wire, c } = conn();
  wire.write(encodeFrame({ t: 'round', round: -1, batches: 1 }));
  wire.write(encodeFrame({ t: 'round-ack', round: 2 }));
  await assert.rejects(c.next(1000), /message 'round' has a bad 'round'/);
  assert.deepEqual(await c.next(1000), { t: 'round-ack', round: 2 });
  assert.equal(c.closed, false);
});

test('a silent peer times out as a network error', async () => {
  const { c } = conn();
  await assert.rejects(c.next(50), (e: unknown) => e instanceof PhaulError && e.code === 'network');
});

test('the splitter copies a frame that arrives in many chunks once, whole', () => {
  const sp = new FrameSplitter(MAX_FRAME);
  const body = Buffer.alloc(8 << 20);
  for (let i = 0; i < body.length; i += 4096) body[i] = i & 0xff;
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length);
  const wire = Buffer.concat([head, body, head.subarray(0, 2)]);
  for (let off = 0; off < wire.length; off += 65536) {
    sp.push(wire.subarray(off, Math.min(wire.length, off + 65536)));
    if (off + 65536 < 4 + body.length) assert.equal(sp.next(), undefined);
  }
  const got = sp.next();
  assert.ok(got && got.equals(body));
  assert.equal(sp.next(), undefined);
  assert.equal(sp.buffered, 2);
});

test('sendWithData sends a frame that decodes as send\'s does, and it round-trips with a MAC', async () => {
  const data = Buffer.alloc(300_000);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
  const msg = { t: 'image' as const, name: 'pages-1.img', data, append: true };
  const wires: Buffer[][] = [];
  for (const how of ['send', 'sendWithData'] as const) {
    const { wire, c } = conn();
    const got: Buffer[] = [];
    wire.on('data', (d: Buffer) => got.push(d));
    if (how === 'send') c.send(msg);
    else await c.sendWithData(msg);
    await new Promise((r) => setImmediate(r));
    wires.push(got);
  }
  const [viaSend, viaData] = wires.map((w) => Buffer.concat(w));
  assert.equal(viaData.readUInt32BE(0), viaData.length - 4, 'one whole frame');
  assert.deepEqual(new Packr({ useRecords: false }).unpack(viaData.subarray(4)), new Packr({ useRecords: false }).unpack(viaSend.subarray(4)));

  // Authenticated (the conn reads what it writes: one key both ways), empty and large payloads.
  const { c } = conn();
  const key = Buffer.alloc(32, 9);
  c.protect({ send: key, receive: key });
  await c.sendWithData({ t: 'image', name: 'empty.img', data: Buffer.alloc(0), append: false });
  await c.sendWithData(msg);
  const a = await c.expect('image', 1000);
  assert.equal(a.name, 'empty.img');
  assert.equal(a.data.length, 0);
  const b = await c.expect('image', 1000);
  assert.equal(b.append, true);
  assert.ok(b.data.equals(data));
});
