// The destination's check of a container network description from the wire
// (src/container/network.ts): what is well formed passes unchanged, anything
// that could name another device, a path or a bad address is refused.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { checkNetwork, routeArgs } from '../src/container/network';
import { PhaulError } from '../src/errors';

const good = () => ({
  container: {
    ifname: 'eth0', mac: '6a:93:bd:75:26:4d', mtu: 1500,
    addrs: [{ family: 'inet', local: '10.99.0.2', prefixlen: 32 }, { family: 'inet6', local: 'fd00::2', prefixlen: 128 }],
    routes: [{ family: 'inet', dst: '169.254.1.1', scope: 'link' }, { family: 'inet', dst: 'default', gateway: '169.254.1.1' }],
  },
  host: {
    ifname: 'vethab12', mac: '1e:51:cc:1e:cd:f1', mtu: 1500, addrs: [{ family: 'inet', local: '169.254.1.1', prefixlen: 32 }],
    routes: [{ family: 'inet', dst: '10.99.0.2' }], proxyArp: false, bridge: { name: 'cni0', addrs: [{ family: 'inet', local: '10.88.0.1', prefixlen: 16 }] },
  },
});

test('a well-formed description passes unchanged', () => {
  assert.deepEqual(checkNetwork(good()), good());
});

const bad: [string, (n: ReturnType<typeof good>) => void][] = [
  ['an interface name that is a path', (n) => { n.container.ifname = '../eth0'; }],
  ['an interface name too long for the kernel', (n) => { n.host.ifname = 'a'.repeat(16); }],
  ['a bridge name with a space', (n) => { n.host.bridge.name = 'br 0'; }],
  ['a MAC that is not one', (n) => { n.container.mac = 'zz:93:bd:75:26:4d'; }],
  ['an MTU out of range', (n) => { n.host.mtu = 10; }],
  ['an address of the wrong family', (n) => { n.container.addrs[0].local = 'fd00::1'; }],
  ['an address that is an option', (n) => { n.container.addrs[0].local = '-all'; }],
  ['a prefix length out of range', (n) => { n.container.addrs[0].prefixlen = 33; }],
  ['a route to a word', (n) => { n.container.routes[0].dst = 'dev'; }],
  ['a route with two prefixes', (n) => { n.host.routes[0].dst = '10.0.0.0/8/8'; }],
  ['a gateway that is not an address', (n) => { (n.container.routes[1] as { gateway?: string }).gateway = 'lo'; }],
  ['an unknown scope', (n) => { n.container.routes[0].scope = 'universe'; }],
  ['too many routes', (n) => { n.host.routes = Array.from({ length: 65 }, () => ({ family: 'inet', dst: '10.99.0.2' })); }],
];

for (const [what, spoil] of bad) {
  test(`refused: ${what}`, () => {
    const n = good();
    spoil(n);
    assert.throws(() => checkNetwork(n), (e: unknown) => e instanceof PhaulError && e.code === 'protocol');
  });
}

test('a route becomes ip arguments with nothing from the wire in an option position', () => {
  assert.deepEqual(routeArgs({ family: 'inet', dst: 'default', gateway: '169.254.1.1' }, 'eth0'),
    ['-4', 'route', 'replace', 'default', 'via', '169.254.1.1', 'dev', 'eth0']);
  assert.deepEqual(routeArgs({ family: 'inet6', dst: 'fd00::/64', scope: 'link', onlink: true }, 'eth0'),
    ['-6', 'route', 'replace', 'fd00::/64', 'dev', 'eth0', 'scope', 'link', 'onlink']);
});
