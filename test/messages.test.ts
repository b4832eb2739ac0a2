// The one message validator: every message type round-trips through it, and
// bad messages from a peer are refused with an error that names the message
// and the field, never with a crash or an untyped value.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { parseMessage, type Message } from '../src/protocol/messages';
import { PhaulError } from '../src/errors';

const caps = { phaulVersion: '0.1.0', criu: { major: 4, minor: 2, sublevel: 1 }, kernel: '6.18.0', arch: 'x64', modes: ['stop-copy'] };
const b = (n: number) => Buffer.alloc(n, 7);

const GOOD: Message[] = [
  { t: 'hello', proto: 1, role: 'control', session: '', nonce: b(32) },
  { t: 'challenge', nonce: b(32), proof: b(32) },
  { t: 'auth', mac: b(32) },
  { t: 'welcome', session: 'abc' },
  { t: 'error', code: 'criu', message: 'criu dump failed' },
  { t: 'caps', caps, mode: 'auto' },
  { t: 'caps', caps },
  { t: 'prepare', mode: 'precopy', criu: { tcpEstablished: true }, streams: 2, memBytes: 1 << 30 },
  { t: 'prepared' },
  { t: 'layout', procs: [{ pid: 42, ranges: [{ vaddr: 0x7f0000000000, nrPages: 256 }] }, { pid: 43, ranges: [] }] },
  { t: 'layout', procs: [], gone: [44, 45] },
  { t: 'layout-ack' },
  { t: 'round', round: 3, batches: 10, final: true },
  { t: 'round-ack', round: 3 },
  { t: 'image', name: 'pstree.img', data: b(10), append: false },
  { t: 'images-done' },
  { t: 'restore' },
  { t: 'switchover', imageIds: { 1: 4242 } },
  { t: 'restored', pid: 4242, restoreMs: 30 },
  { t: 'commit' },
  { t: 'running', pid: 4242 },
  { t: 'filled', ok: true, ms: 1200 },
  { t: 'filled', ok: true, ms: 1200, fill: { pages: 10, faultUs: { p50: 3, p99: 40, max: 90 } } },
  { t: 'abort', message: 'gave up' },
];

test('every message type passes the validator unchanged', () => {
  const types = new Set<string>();
  for (const m of GOOD) {
    assert.deepEqual(parseMessage(structuredClone(m)), m, m.t);
    types.add(m.t);
  }
  assert.equal(types.size, 21, 'one example per message type');
});

test('unknown fields are dropped, unknown CRIU flags ignored', () => {
  assert.deepEqual(parseMessage({ t: 'commit', evil: { __proto__: { x: 1 } } }), { t: 'commit' });
  assert.deepEqual(parseMessage({ t: 'prepare', mode: 'stop-copy', criu: { tcpEstablished: true, exec: 'rm -rf /', shellJob: 1 }, memBytes: 4096 }),
    { t: 'prepare', mode: 'stop-copy', criu: { tcpEstablished: true }, memBytes: 4096 });
});

test('bad messages are refused with a protocol error naming the message and field', () => {
  const bad: [unknown, RegExp][] = [
    [null, /malformed message/],
    [[1, 2], /malformed message/],
    [{ t: 7 }, /malformed message/],
    [{ t: 'teleport' }, /unknown message type 'teleport'/],
    [{ t: 'hello', proto: 1, role: 'root', session: '', nonce: b(32) }, /'hello' has a bad 'role'/],
    [{ t: 'hello', proto: 1, role: 'data', session: '', nonce: b(4096) }, /'hello' has a bad 'nonce'/],
    [{ t: 'caps', caps: { ...caps, modes: 'hybrid' } }, /'caps' has a bad 'caps'/],
    [{ t: 'caps', caps: { ...caps, criu: { major: -1, minor: 0, sublevel: 0 } } }, /'caps' has a bad 'caps'/],
    [{ t: 'caps', caps, mode: 'x'.repeat(100) }, /'caps' has a bad 'mode'/],
    [{ t: 'prepare', mode: 'precopy', criu: {}, memBytes: 0, streams: 1_000_000 }, /'prepare' has a bad 'streams'/],
    [{ t: 'prepare', mode: 'precopy', criu: {}, streams: 1 }, /'prepare' has a bad 'memBytes'/],
    [{ t: 'prepare', mode: 'precopy', criu: {}, memBytes: 0, freezeTimeoutMs: 5 }, /'prepare' has a bad 'freezeTimeoutMs'/],
    [{ t: 'prepare', mode: 'precopy', criu: 'all', memBytes: 0 }, /'prepare' has a bad 'criu'/],
    [{ t: 'prepare', criu: {} }, /'prepare' has a bad 'mode'/],
    [{ t: 'layout', procs: [{ pid: 0, ranges: [] }] }, /'layout' has a bad 'procs'/],
    [{ t: 'layout', procs: [{ pid: 1, ranges: [{ vaddr: -4096, nrPages: 1 }] }] }, /'layout' has a bad 'procs'/],
    [{ t: 'layout', procs: [{ pid: 1, ranges: [{ vaddr: 4096, nrPages: 0.5 }] }] }, /'layout' has a bad 'procs'/],
    [{ t: 'layout', procs: [{ pid: 1, ranges: 'everything' }] }, /'layout' has a bad 'procs'/],
    [{ t: 'layout', procs: 'all' }, /'layout' has a bad 'procs'/],
    [{ t: 'layout', procs: [], gone: [0] }, /'layout' has a bad 'gone'/],
    [{ t: 'layout', procs: [], gone: 'everyone' }, /'layout' has a bad 'gone'/],
    [{ t: 'layout', procs: Array.from({ length: 2 }, (_, i) => ({ pid: i + 1, ranges: new Array((1 << 19) + 1).fill({ vaddr: 0, nrPages: 1 }) })) },
      /'layout' has a bad 'procs'/],
    [{ t: 'round', round: 1, batches: -1 }, /'round' has a bad 'batches'/],
    [{ t: 'round', round: 1, batches: 1, final: 'yes' }, /'round' has a bad 'final'/],
    [{ t: 'image', name: '../../etc/passwd', data: b(1) }, /bad image name/],
    [{ t: 'image', name: '.hidden', data: b(1) }, /bad image name/],
    [{ t: 'image', name: 'core-1.img', data: 'text' }, /'image' has a bad 'data'/],
    [{ t: 'switchover', imageIds: { '../1': 5 } }, /'switchover' has a bad 'imageIds'/],
    [{ t: 'switchover', imageIds: { 1: 1.5 } }, /'switchover' has a bad 'imageIds'/],
    [{ t: 'restored', pid: 2 ** 40 }, /'restored' has a bad 'pid'/],
    [{ t: 'running' }, /'running' has a bad 'pid'/],
    [{ t: 'filled', ok: 1, ms: 5 }, /'filled' has a bad 'ok'/],
    [{ t: 'filled', ok: true, ms: 5, fill: { pages: 'all' } }, /'filled' has a bad 'fill'/],
    [{ t: 'filled', ok: true, ms: 5, fill: { a: { b: { c: 1 } } } }, /'filled' has a bad 'fill'/],
  ];
  for (const [raw, re] of bad) {
    assert.throws(() => parseMessage(raw), (e: unknown) => e instanceof PhaulError && e.code === 'protocol' && re.test(e.message),
      JSON.stringify(raw, (_k, v) => (Buffer.isBuffer(v) ? `<${v.length} bytes>` : v)));
  }
});

test("a peer's error keeps a known code only, and its message stays one bounded line", () => {
  assert.deepEqual(parseMessage({ t: 'error', code: 'auth', message: 'no' }), { t: 'error', code: 'auth', message: 'no' });
  const e = parseMessage({ t: 'error', code: 'constructor', message: `x\n  at evil ${'y'.repeat(5000)}` });
  assert.equal(e.t === 'error' && e.code, 'failed');
  assert.ok(e.t === 'error' && !e.message.includes('\n') && e.message.length <= 1000);
  assert.equal((parseMessage({ t: 'abort' }) as { message: string }).message, 'unspecified error');
});
