// A container network for tests, as CNI's ptp plugin builds one: the
// container's own named network namespace with one veth, its address a /32
// on the container's end, the host's end in host a holding the gateway
// address, and a host route to the container through it. A third namespace
// (the client) is linked to host a only and routed to the container's
// address through it; host b routes the client's subnet back through host a.
// So the client reaches the container through the two hosts wherever it runs.
import * as fs from 'node:fs';
import { PhaulError } from '../errors';
import type { Host, TwoHosts } from './hosts';
import { runCmd } from './proc';

export interface ContainerNet {
  /** The client's namespace (a path for nsenter). */
  clientNs: string;
  /** The container's namespace, named (config.json's linux.namespaces network path). */
  ctrNs: string;
  ctrAddr: string;
  /** The host end of the container's veth, in host a. */
  hostIf: string;
  /** Removes the client's and the container's namespaces (and their veths); idempotent. */
  destroy(): Promise<void>;
}

async function ip(...args: string[]): Promise<void> {
  const r = await runCmd(['ip', ...args], { timeoutMs: 10_000 });
  if (r.code !== 0) throw new PhaulError('failed', `ip ${args.join(' ')}: ${r.stderr.trim()}`);
}

async function forwarding(h: Host): Promise<void> {
  const r = await runCmd(['nsenter', `--net=${h.netnsPath}`, 'sh', '-c', 'echo 1 > /proc/sys/net/ipv4/ip_forward'], { timeoutMs: 10_000 });
  if (r.code !== 0) throw new PhaulError('failed', `ip_forward in ${h.name}: ${r.stderr.trim()}`);
}

/** `tag`: a few [a-z0-9] characters unique to the caller (names the namespaces and the host-side veth). */
export async function createContainerNet(hosts: TwoHosts, tag: string): Promise<ContainerNet> {
  if (!/^[a-z0-9]{1,8}$/.test(tag)) throw new PhaulError('usage', `bad tag '${tag}'`);
  const a = hosts.a;
  const b = hosts.b;
  const client = `pfcn-${process.pid}-${tag}-c`;
  const ctr = `pfcn-${process.pid}-${tag}-ctr`;
  const hostIf = `vh${tag}`;
  const ctrAddr = '10.99.0.2';
  const destroy = async () => {
    for (const n of [client, ctr]) if (fs.existsSync(`/run/netns/${n}`)) await runCmd(['ip', 'netns', 'del', n], { timeoutMs: 10_000 });
  };
  try {
    await ip('netns', 'add', client);
    await ip('netns', 'add', ctr);
    // The client's link to host a.
    await ip('link', 'add', 'vc', 'netns', a.name, 'type', 'veth', 'peer', 'name', 'vc', 'netns', client);
    await ip('-n', a.name, 'addr', 'add', '10.78.0.1/24', 'dev', 'vc');
    await ip('-n', a.name, 'link', 'set', 'vc', 'up');
    await ip('-n', client, 'addr', 'add', '10.78.0.2/24', 'dev', 'vc');
    await ip('-n', client, 'link', 'set', 'vc', 'up');
    await ip('-n', client, 'link', 'set', 'lo', 'up');
    await ip('-n', client, 'route', 'add', 'default', 'via', '10.78.0.1');
    await ip('-n', b.name, 'route', 'replace', '10.78.0.0/24', 'via', a.addr);
    await forwarding(a);
    // The container's veth, plugged into host a as CNI's ptp plugin does.
    await ip('link', 'add', hostIf, 'netns', a.name, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ctr);
    await ip('-n', ctr, 'link', 'set', 'lo', 'up');
    await ip('-n', ctr, 'addr', 'add', `${ctrAddr}/32`, 'dev', 'eth0');
    await ip('-n', ctr, 'link', 'set', 'eth0', 'up');
    await ip('-n', a.name, 'addr', 'add', '169.254.1.1/32', 'dev', hostIf);
    await ip('-n', a.name, 'link', 'set', hostIf, 'up');
    await ip('-n', ctr, 'route', 'add', '169.254.1.1', 'dev', 'eth0', 'scope', 'link');
    await ip('-n', ctr, 'route', 'add', 'default', 'via', '169.254.1.1', 'dev', 'eth0');
    // (replace: an earlier migration may have left host a a route on to host b)
    await ip('-n', a.name, 'route', 'replace', `${ctrAddr}/32`, 'dev', hostIf);
  } catch (e) {
    await destroy();
    throw e;
  }
  return { clientNs: `/run/netns/${client}`, ctrNs: `/run/netns/${ctr}`, ctrAddr, hostIf, destroy };
}
