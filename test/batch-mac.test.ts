// Page batches are authenticated in plain mode (native/batch_io.cc, docs/PROTOCOL.md):
// an on-path relay that flips one bit of a data connection's page data makes
// the destination drop the session; the source rolls back and the workload
// runs on at the source, every page verified, nothing left at the destination.
// Real agents, CRIU, workload and namespaces; the relay is a small node process
// in the destination's namespace between migrate and serve.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import type { ChildProcess } from 'node:child_process';
import { spawnIn } from '../src/testing/hosts';
import { startMemWorkload } from '../src/testing/workload';
import { isAlive, procState, sleep } from '../src/testing/proc';
import { runCli, useTwoHostsWithServe } from './helpers/agents';

const root = process.getuid?.() === 0;
const skip = root ? false : 'needs root (CRIU, network namespaces)';

const fx = useTwoHostsWithServe({ prefix: 'pfmac', tag: 'batch-mac', enabled: root });

/**
 * Relays ADDR:LISTEN to ADDR:TARGET; on every connection after the first (the
 * control connection) it flips one bit of the byte at offset FLIP, well past
 * the handshake: inside page data.
 */
const RELAY = `
const net = require('node:net');
const [addr, listen, target, flip] = process.argv.slice(1);
let n = 0;
net.createServer((c) => {
  const id = n++;
  const s = net.connect(Number(target), addr);
  let seen = 0;
  c.on('data', (d) => {
    const at = Number(flip) - seen;
    if (id > 0 && at >= 0 && at < d.length) { d = Buffer.from(d); d[at] ^= 0x10; }
    seen += d.length;
    s.write(d);
  });
  s.pipe(c);
  const end = () => { c.destroy(); s.destroy(); };
  c.on('end', () => s.end());
  c.on('error', end); s.on('error', end); c.on('close', end); s.on('close', end);
}).listen(Number(listen), addr, () => console.log('ready'));
`;

function startRelay(listen: number): Promise<ChildProcess> {
  const p = spawnIn(fx.hosts.b, [process.execPath, '-e', RELAY, fx.hosts.b.addr, String(listen), String(fx.serve.port), String(2 << 20)],
    { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    p.stdout!.once('data', () => resolve(p));
    p.once('exit', (code) => reject(new Error(`relay exited ${code}`)));
  });
}

for (const mode of ['precopy', 'hybrid']) {
  test(`${mode}: one bit of page data flipped on the way: the destination drops the session, the workload runs on at the source intact`, { skip, timeout: 180_000 }, async () => {
    const w = await startMemWorkload({ mib: 64, writeMBps: 5, netns: fx.hosts.a.netnsPath! });
    const port = fx.serve.port + 100 + (mode === 'hybrid' ? 1 : 0);
    const relay = await startRelay(port);
    try {
      const r = await runCli(fx.hosts.a, ['migrate', '--pid', String(w.pid), '--to', `${fx.hosts.b.addr}:${port}`,
        '--token-file', fx.token, '--mode', mode, '--json'], 150_000);
      assert.notEqual(r.code, 0, 'the migration failed');
      assert.match(r.stderr + JSON.stringify(r.json ?? {}), /failed authentication/, 'and says why');
      assert.equal(r.json?.rolledBack, true, r.stderr);
      assert.ok(isAlive(w.pid), 'the original is alive');
      for (let i = 0; i < 50 && procState(w.pid) === 'T'; i++) await sleep(100);
      assert.notEqual(procState(w.pid), 'T', 'the original is not left stopped');
      const rep = await w.report();
      assert.equal(rep.ok, true, `the original verifies all its memory: ${JSON.stringify(rep)}`);
      const end = Date.now() + 60_000;
      while (fs.readdirSync(fx.serve.dir).length && Date.now() < end) await sleep(200);
      assert.deepEqual(fs.readdirSync(fx.serve.dir), [], 'the destination removed the session');
    } finally {
      relay.kill('SIGKILL'); // a process this test started
      await w.stop();
    }
  });
}
