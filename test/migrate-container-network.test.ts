// A runc container in a named network namespace plugged into host a with a
// veth (CNI ptp style: src/testing/container-net.ts) keeps its address and an
// established TCP connection across a migration: a client in a third
// namespace, routed to the container's address through the hosts, talks to it
// over one connection before, during and after, and every echo comes back in
// order; afterwards the destination serves the address and the source's side
// is gone. Real runc, CRIU (--tcp-established under the nftables lock), veths.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runCmd, sleep } from '../src/testing/proc';
import { ExitCode } from '../src/errors';
import { makeBundle, removeContainer, runContainer, runcState } from '../src/testing/container';
import { ContainerNet, createContainerNet } from '../src/testing/container-net';
import { runCli, ServeAgent, startServe } from './helpers/agents';
import { containerSkip, useContainerHosts } from './helpers/container-hosts';

const skip = containerSkip;
const fx = useContainerHosts('pfcnet');
const PORT = 7000;

interface Started {
  id: string;
  net: ContainerNet;
  pid: number;
}

/** An echo server (busybox nc, one cat per connection) in a container on host a, in its own plugged-in namespace. */
async function startServer(n: number): Promise<Started> {
  const id = `ctrnet-${fx.tag}-${n}`;
  const net = await createContainerNet(fx.hosts, `${fx.tag.slice(0, 4)}${n}`);
  const bundle = await makeBundle({
    dir: path.join(fx.dir, 'bundles-a', id), cgroupsPath: `/${fx.cgA}/${id}`, netnsPath: net.ctrNs,
    args: ['/bin/nc', '-ll', '-p', String(PORT), '-e', '/bin/cat'],
  });
  const pid = await runContainer(fx.rootA, bundle, id, fx.hosts.a.netnsPath);
  return { id, net, pid };
}

async function cleanup(c: Started): Promise<void> {
  await removeContainer(fx.rootA, c.id);
  await removeContainer(fx.rootB, c.id);
  await runCmd(['ip', 'netns', 'del', `phaul-${c.id}`], { timeoutMs: 10_000 });
  await c.net.destroy();
}

/** One TCP connection from the client's namespace; say(n) sends a line and waits for its echo, which must be next. */
class Client {
  private readonly proc: ChildProcess;
  private buf = '';
  private readonly lines: string[] = [];
  private waiter?: () => void;
  closed = false;

  constructor(ns: string, addr: string) {
    this.proc = spawn('nsenter', [`--net=${ns}`, '/bin/busybox', 'nc', addr, String(PORT)], { stdio: ['pipe', 'pipe', 'ignore'] });
    this.proc.stdout!.on('data', (d) => {
      this.buf += d;
      let i: number;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        this.lines.push(this.buf.slice(0, i));
        this.buf = this.buf.slice(i + 1);
      }
      this.waiter?.();
    });
    this.proc.on('exit', () => { this.closed = true; this.waiter?.(); });
  }

  async say(n: number, timeoutMs: number): Promise<void> {
    this.proc.stdin!.write(`${n}\n`);
    const end = Date.now() + timeoutMs;
    while (this.lines.length === 0) {
      assert.ok(!this.closed, `the connection closed before the echo of ${n}`);
      assert.ok(Date.now() < end, `no echo of ${n} within ${timeoutMs} ms`);
      await new Promise<void>((r) => { this.waiter = r; setTimeout(r, 100); });
    }
    assert.equal(this.lines.shift(), String(n), 'echoes come back in order');
  }

  close(): void {
    if (!this.closed) this.proc.kill('SIGKILL');
  }
}

async function connectClient(c: Started): Promise<Client> {
  // The server listens once runc has started it; the first echo proves the connection.
  for (let i = 0; ; i++) {
    const cl = new Client(c.net.clientNs, c.net.ctrAddr);
    try {
      await cl.say(0, 2000);
      return cl;
    } catch (e) {
      cl.close();
      if (i >= 20) throw e;
      await sleep(100);
    }
  }
}

async function established(ns: string): Promise<string> {
  const r = await runCmd(['nsenter', `--net=${ns}`, 'ss', '-tnH', 'state', 'established'], { timeoutMs: 10_000 });
  return r.stdout;
}

for (const mode of ['hybrid', 'stop-copy']) {
  test(`${mode}: the container keeps its address and a client's established connection; the destination serves it after`, { skip }, async () => {
    const c = await startServer(mode === 'hybrid' ? 1 : 2);
    let client: Client | undefined;
    try {
      client = await connectClient(c);
      let n = 1;
      for (; n <= 20; n++) await client.say(n, 5000);
      const migration = runCli(fx.hosts.a, ['migrate', '--container', c.id, '--runtime-root', fx.rootA, '--to', `${fx.hosts.b.addr}:${fx.serve.port}`,
        '--token-file', fx.token, '--json', '--mode', mode], 120_000);
      let done = false;
      migration.finally(() => { done = true; }).catch(() => undefined);
      // During: one line at a time; an echo may wait out the switchover (TCP retransmits).
      const during = n;
      while (!done) await client.say(n++, 60_000);
      assert.ok(n > during, 'lines went while the migration ran');
      const r = await migration;
      assert.equal(r.code, 0, r.stderr);
      const rep = r.json!;
      assert.equal(rep.ok, true);
      assert.equal(rep.mode, mode);
      assert.equal(rep.container.netns, `/run/netns/phaul-${c.id}`);
      assert.equal(rep.warning, undefined, rep.warning);
      for (const stop = n + 20; n < stop; n++) await client.say(n, 10_000);

      // The destination's runc runs it, in the namespace the destination made.
      const dst = await runcState(fx.rootB, c.id);
      assert.equal(dst?.status, 'running');
      assert.equal(await runcState(fx.rootA, c.id), null);
      const cfg = JSON.parse(fs.readFileSync(path.join(dst!.bundle, 'config.json'), 'utf8'));
      assert.deepEqual(cfg.linux.namespaces.find((x: { type: string }) => x.type === 'network'), { type: 'network', path: rep.container.netns });
      assert.match(await established(rep.container.netns), new RegExp(`${c.net.ctrAddr.replace(/\./g, '\\.')}\\]?:${PORT}\\s+\\S*10\\.78\\.0\\.2\\]?:`), 'the connection lives at the destination');
      // The source's side is gone: its namespace (and with it the veth), and the address routes on to the destination.
      assert.ok(!fs.existsSync(c.net.ctrNs), 'the source\'s namespace was deleted');
      const route = await fx.hosts.run(fx.hosts.a, ['ip', '-j', 'route', 'get', c.net.ctrAddr]);
      assert.equal(JSON.parse(route.stdout)[0].gateway, fx.hosts.b.addr, route.stdout);
      const link = await fx.hosts.run(fx.hosts.b, ['ip', '-j', 'addr', 'show', 'dev', c.net.hostIf]);
      assert.equal(link.code, 0, 'the host end of the veth is at the destination');
      assert.ok(JSON.parse(link.stdout)[0].addr_info.some((a: { local: string }) => a.local === '169.254.1.1'), link.stdout);
      // The destination's lock is gone; a second connection works too.
      const nft = await runCmd(['nsenter', `--net=${rep.container.netns}`, 'nft', 'list', 'tables'], { timeoutMs: 10_000 });
      assert.equal(nft.stdout.trim(), '', 'no lock left in the container\'s namespace');
      const second = await connectClient(c);
      await second.say(1, 5000);
      second.close();
    } finally {
      client?.close();
      await cleanup(c);
    }
  });
}

test('a failure after CRIU\'s dump rolls back: the source\'s container keeps its connection, the destination removes its namespace', { skip }, async () => {
  // A destination whose runc cannot restore (its state directory is a file): the dump succeeds, the restore fails.
  const bogus = path.join(fx.dir, 'not-a-dir');
  fs.writeFileSync(bogus, '');
  const c = await startServer(3);
  let broken: ServeAgent | undefined;
  let client: Client | undefined;
  try {
    broken = await startServe(fx.hosts.b, fx.token, path.join(fx.dir, 'dest-broken'), ['--runtime-root', bogus, '--bundles', fx.bundlesB, '--cgroup-parent', fx.cgB]);
    client = await connectClient(c);
    for (let n = 1; n <= 5; n++) await client.say(n, 5000);
    const r = await runCli(fx.hosts.a, ['migrate', '--container', c.id, '--runtime-root', fx.rootA, '--to', `${fx.hosts.b.addr}:${broken.port}`,
      '--token-file', fx.token, '--json', '--mode', 'precopy'], 120_000);
    assert.equal(r.code, ExitCode.criu, r.stderr);
    assert.equal(r.json!.rolledBack, true);
    assert.equal((await runcState(fx.rootA, c.id))?.status, 'running');
    // The same connection carries on at the source: CRIU's lock is lifted.
    for (let n = 6; n <= 15; n++) await client.say(n, 5000);
    const nft = await runCmd(['nsenter', `--net=${c.net.ctrNs}`, 'nft', 'list', 'tables'], { timeoutMs: 10_000 });
    assert.equal(nft.stdout.trim(), '', 'no CRIU lock left in the container\'s namespace');
    assert.ok(!fs.existsSync(`/run/netns/phaul-${c.id}`), 'the destination removed the namespace it made');
    const link = await fx.hosts.run(fx.hosts.b, ['ip', 'link', 'show', 'dev', c.net.hostIf]);
    assert.notEqual(link.code, 0, 'and the veth with it');
  } finally {
    client?.close();
    await broken?.stop();
    await cleanup(c);
  }
});
