// TCP_USER_TIMEOUT (native/socket_opts.cc, set on every agent socket by
// src/agent/connect.ts): with data in flight and every packet dropped (nftables
// in a network namespace of its own), a socket with the option fails within
// its timeout; the same socket without it is still waiting long after.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { createLoopbackHost, runIn } from '../src/testing/hosts';

const root = process.getuid?.() === 0;
const skip = root ? false : 'needs root (a network namespace and nftables)';

// Runs in the namespace: a server that never reads, a client that writes 8 MiB, then all TCP
// on the port is dropped; prints how the client's socket ended within 8 s.
const SCRIPT = `
const net = require('node:net');
const { setUserTimeout } = require(${JSON.stringify(path.join(__dirname, '..', 'src', 'native', 'socket-opts.js'))});
const { execFileSync } = require('node:child_process');
const withTimeout = process.argv[1] === 'on';
const srv = net.createServer((s) => s.pause()).listen(0, '127.0.0.1', () => {
  const port = srv.address().port;
  const c = net.connect(port, '127.0.0.1', () => {
    if (withTimeout && !setUserTimeout(c, 2000)) { console.log('unset'); process.exit(1); }
    execFileSync('nft', ['-f', '-'], { input: 'table inet pfsockopt {\\n chain out {\\n  type filter hook output priority 0; policy accept;\\n  tcp dport ' + port + ' drop\\n  tcp sport ' + port + ' drop\\n }\\n}\\n' });
    const t0 = Date.now();
    c.on('error', (e) => { console.log(e.code + ' ' + (Date.now() - t0)); process.exit(0); });
    c.write(Buffer.alloc(8 << 20));
    setTimeout(() => { console.log('open ' + (Date.now() - t0)); process.exit(0); }, 8000);
  });
});
`;

test('TCP_USER_TIMEOUT ends a connection whose data goes unacknowledged; without it the socket waits on', { skip }, async () => {
  const h = await createLoopbackHost({ prefix: 'pfsockopt' });
  try {
    const on = await runIn(h.a, [process.execPath, '-e', SCRIPT, 'on'], { timeoutMs: 30_000 });
    await runIn(h.a, ['nft', 'delete', 'table', 'inet', 'pfsockopt']);
    const off = await runIn(h.a, [process.execPath, '-e', SCRIPT, 'off'], { timeoutMs: 30_000 });
    const [onWhat, onMs] = on.stdout.trim().split(' ');
    assert.equal(onWhat, 'ETIMEDOUT', `with the option: ${on.stdout}${on.stderr}`);
    assert.ok(Number(onMs) < 7000, `with the option it ended after ${onMs} ms`);
    assert.match(off.stdout.trim(), /^open /, `without the option the socket is still open after 8 s: ${off.stdout}${off.stderr}`);
  } finally {
    await h.destroy();
  }
});
