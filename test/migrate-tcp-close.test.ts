// `migrate --tcp-close`: a server with clients connected moves between two
// network namespaces (two hosts, real CRIU): the connections, which cannot
// follow it to another address, are dumped closed; the client sees its
// connection end and a new one reaches the server at the destination.
// Without the option, CRIU refuses to dump an established connection and the
// migration rolls back: the server and its client carry on at the source.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { startInPidNamespace } from '../src/testing/workload';
import { isAlive, listening, processesMentioning, procState, until } from '../src/testing/proc';
import { runIn, spawnIn } from '../src/testing/hosts';
import { runCli, useTwoHostsWithServe } from './helpers/agents';

const root = process.getuid?.() === 0;
const skip = root ? false : 'needs root (CRIU, ptrace, network namespaces)';

const fx = useTwoHostsWithServe({ prefix: 'pftcpc', tag: 'tcp-close', enabled: root });

const PORT = 7796;

/** An echo server, one thread per connection (its own program text: ours to find and end). */
const SERVER = 'import socket,threading\n# phaul-fast test: tcp-close echo server\n' +
  's=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n' +
  `s.bind(('0.0.0.0', ${PORT})); s.listen()\n` +
  'def echo(c):\n  while True:\n    try:\n      d=c.recv(64)\n    except OSError:\n      break\n' +
  '    if not d: break\n    c.sendall(d)\n  c.close()\n' +
  'while True:\n  c,_=s.accept(); threading.Thread(target=echo, args=(c,), daemon=True).start()\n';

/** A client that echoes "ping" every 20 ms and says how many came back, and how its connection ended. */
function client(addr: string): string {
  return `import socket,sys,time\nc=socket.create_connection(('${addr}', ${PORT}))\nn=0\n` +
    'try:\n  while True:\n    c.sendall(b"ping")\n    d=c.recv(64)\n' +
    '    if not d:\n      print("closed eof", n, flush=True); break\n' +
    '    n+=1; print("ok", n, flush=True); time.sleep(0.02)\n' +
    'except OSError as e:\n  print("closed", e.strerror, n, flush=True)\n';
}

interface Running {
  pid: number;
  client: ChildProcess;
  out(): string;
  echoes(): number;
}

/** The server in its own pid namespace on host a, and a client connected to it from host a. */
async function startServerAndClient(): Promise<Running> {
  const ns = startInPidNamespace(['python3', '-c', SERVER], { netns: fx.hosts.a.netnsPath!, stderr: 'ignore' });
  let pid = -1;
  assert.ok(await until(() => (pid = ns.initPid()) > 0, 10_000), 'the server started');
  assert.ok(await until(() => listening(pid, PORT), 30_000), 'the server listens'); // python starts slowly on a loaded machine
  const c = spawnIn(fx.hosts.a, ['python3', '-c', client(fx.hosts.a.addr)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  c.stdout!.on('data', (d) => { out += d; });
  c.stderr!.on('data', (d) => { out += d; });
  const echoes = () => Number(/ok (\d+)\n(?![\s\S]*ok \d+\n)/.exec(out)?.[1] ?? 0);
  return { pid, client: c, out: () => out, echoes };
}

function endAll(r: Running | undefined, restored = 0): void {
  if (r?.client.exitCode === null) r.client.kill('SIGKILL');
  for (const p of [r?.pid ?? 0, restored]) if (p > 1 && isAlive(p)) process.kill(p, 'SIGKILL');
  // A copy restored against expectation runs our program: ours to end.
  for (const p of processesMentioning('phaul-fast test: tcp-close echo server')) if (isAlive(p)) process.kill(p, 'SIGKILL');
}

test('tcp-close: --tcp-close and --tcp-established together are a usage error', { skip }, async () => {
  const r = await runCli(fx.hosts.a, ['migrate', '--pid', '12345', '--to', `${fx.hosts.b.addr}:${fx.serve.port}`,
    '--token-file', fx.token, '--tcp-close', '--tcp-established', '--json']);
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.json!.error.message, /either --tcp-established .* or --tcp-close/);
});

test('tcp-close: without it, a connected client makes the dump fail and the server carries on at the source with its connection', { skip }, async () => {
  let s: Running | undefined;
  try {
    s = await startServerAndClient();
    assert.ok(await until(() => s!.echoes() > 3, 10_000), `the client is served: ${s.out()}`);
    const r = await runCli(fx.hosts.a, ['migrate', '--pid', String(s.pid), '--to', `${fx.hosts.b.addr}:${fx.serve.port}`,
      '--token-file', fx.token, '--mode', 'stop-copy', '--json']);
    assert.notEqual(r.code, 0, 'the migration failed');
    assert.equal(r.json!.rolledBack, true, r.stderr);
    assert.match(r.json!.error.message, /established TCP connections: migrate --tcp-close/, 'the error says what to do');
    assert.ok(isAlive(s.pid) && procState(s.pid) !== 'T', 'the server runs on at the source');
    const n = s.echoes();
    assert.ok(await until(() => s!.echoes() > n + 3, 10_000), `its client is still served on the same connection: ${s.out()}`);
  } finally {
    endAll(s);
  }
});

for (const mode of ['stop-copy', 'hybrid']) {
  test(`tcp-close: ${mode} moves a server with a client connected; the client's connection ends, a new one is served at the destination`, { skip }, async () => {
    let s: Running | undefined;
    let restored = 0;
    try {
      s = await startServerAndClient();
      assert.ok(await until(() => s!.echoes() > 3, 10_000), `the client is served: ${s.out()}`);
      const r = await runCli(fx.hosts.a, ['migrate', '--pid', String(s.pid), '--to', `${fx.hosts.b.addr}:${fx.serve.port}`,
        '--token-file', fx.token, '--mode', mode, '--tcp-close', '--json']);
      assert.equal(r.code, 0, r.stderr);
      restored = r.json!.restoredPid;
      assert.ok(restored > 1 && isAlive(restored), 'the server runs at the destination');
      // The source's connection is gone with the original: the client is told.
      assert.ok(await until(() => /closed/.test(s!.out()), 10_000), `the client's connection ended: ${s.out()}`);
      assert.ok(!isAlive(s.pid) || procState(s.pid) === 'Z', 'the original is gone');
      // A new client reaches the restored server at the destination's address.
      const c = await runIn(fx.hosts.b, ['python3', '-c',
        `import socket\nc=socket.create_connection(('${fx.hosts.b.addr}', ${PORT}), timeout=10)\nc.sendall(b"hello")\nprint(c.recv(64).decode())\n`],
      { timeoutMs: 20_000 });
      assert.equal(c.code, 0, c.stderr);
      assert.equal(c.stdout.trim(), 'hello', 'the restored server echoes');
    } finally {
      endAll(s, restored);
    }
  });
}
