// A source that authenticates correctly and then misbehaves, to prove the
// destination trusts nothing after authentication either. Run as
//   node evil-client.js HOST PORT TOKEN_FILE SCENARIO
// It prints one JSON line: what the destination answered.
import * as net from 'node:net';
import { authenticateClient, readToken } from '../../src/protocol/auth';
import { FrameConn, Message } from '../../src/protocol/frames';
import { localCapabilities } from '../../src/agent/capabilities';

type Scenario = (c: FrameConn) => Promise<void>;

const scenarios: Record<string, Scenario> = {
  // An image name that climbs out of the session directory.
  // (Pre-copy: its destination reads the control channel at once.)
  'path-traversal': async (c) => {
    await prepare(c, { mode: 'precopy', streams: 1 });
    c.send({ t: 'image', name: '../../etc/phaul-evil', data: Buffer.from('x') });
  },
  // An image that claims to be the page server's output.
  'image-overwrite': async (c) => {
    await prepare(c, { mode: 'precopy', streams: 1 });
    c.send({ t: 'image', name: 'inventory.img', data: Buffer.from('a') });
    c.send({ t: 'image', name: 'inventory.img', data: Buffer.from('b') });
  },
  // Out-of-range counts.
  'too-many-streams': async (c) => {
    await prepare(c, { mode: 'precopy', streams: 1_000_000 });
  },
  // A layout far outside user space.
  'bad-layout': async (c) => {
    await prepare(c, { mode: 'precopy', streams: 1 });
    c.send({ t: 'layout', procs: [{ pid: 1, ranges: [{ vaddr: 2 ** 52, nrPages: 1 << 30 }] }] });
  },
  // A session that claims more memory than the host has: refused up front.
  'too-big': async (c) => {
    await prepare(c, { mode: 'precopy', streams: 1, memBytes: 2 ** 50 });
  },
  // A mode nobody offered.
  'unknown-mode': async (c) => {
    await prepare(c, { mode: 'teleport' });
  },
};

async function prepare(c: FrameConn, extra: Record<string, unknown>): Promise<void> {
  const mode = (extra.mode as string) === 'precopy' ? 'precopy' : 'stop-copy';
  c.send({ t: 'caps', caps: await localCapabilities(), mode });
  await c.expect('caps');
  // Bad on purpose: not a well-typed Message.
  c.send({ t: 'prepare', criu: {}, memBytes: 1 << 20, ...extra } as unknown as Message);
}

async function main(): Promise<void> {
  const [host, port, tokenFile, name] = process.argv.slice(2);
  const sc = scenarios[name];
  if (!sc) throw new Error(`unknown scenario ${name}`);
  const sock = net.connect({ host, port: Number(port) });
  await new Promise<void>((r, j) => { sock.once('connect', () => r()); sock.once('error', j); });
  const c = new FrameConn(sock, 'destination');
  await authenticateClient(c, readToken(tokenFile), 'control');
  await sc(c);
  // Whatever the destination says next (or the connection closing) is the verdict.
  let verdict: Message | { t: 'closed'; message: string };
  try {
    for (;;) {
      const m = await c.next(10_000);
      if (m.t !== 'prepared') { verdict = m; break; }
    }
  } catch (e) {
    verdict = { t: 'closed', message: (e as Error).message };
  }
  process.stdout.write(JSON.stringify(verdict) + '\n');
  sock.destroy();
}

main().catch((e) => {
  process.stdout.write(JSON.stringify({ t: 'client-error', message: (e as Error).message }) + '\n');
  process.exitCode = 1;
});
