// What a container's network namespace is plugged into, as the source sees it
// and the destination must rebuild it: the container's network namespace is
// one its config.json names by path (as CNI-driven runtimes make them), so
// CRIU treats it as external and restores the sockets into whatever namespace
// the destination's config names. One veth pair: its container end (MAC, MTU,
// addresses, routes) and its host end (MAC, MTU, bridge or host routes), what
// a CNI bridge or ptp plugin result records. The description is read from the
// live namespaces, never typed by hand; on the destination it is network
// input and checked as such.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { PhaulError } from '../errors';
import { execCmd } from './runc';

export interface IpAddr {
  family: 'inet' | 'inet6';
  local: string;
  prefixlen: number;
}

export interface IpRoute {
  family: 'inet' | 'inet6';
  /** 'default', an address, or ADDRESS/LEN. */
  dst: string;
  gateway?: string;
  scope?: 'link' | 'host';
  onlink?: boolean;
}

export interface VethEnd {
  ifname: string;
  mac: string;
  mtu: number;
}

export interface ContainerNetwork {
  /** The end inside the container's namespace. */
  container: VethEnd & { addrs: IpAddr[]; routes: IpRoute[] };
  /** The end in the host's namespace: in a bridge, or reached by host routes through it. */
  host: VethEnd & { addrs: IpAddr[]; routes: IpRoute[]; proxyArp: boolean; bridge?: { name: string; addrs: IpAddr[] } };
}

const IFNAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$/;
const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
const MAX_ITEMS = 64;

interface IpLink {
  ifindex: number;
  ifname: string;
  link_index?: number;
  address?: string;
  mtu?: number;
  master?: string;
  linkinfo?: { info_kind?: string };
  addr_info?: { family: string; local: string; prefixlen: number; scope?: string }[];
}

/** `ip -j ARGS`, inside the namespace at `netns` when given. */
async function ipJson<T>(netns: string | undefined, args: string[]): Promise<T> {
  const argv = [...(netns ? ['nsenter', `--net=${netns}`] : []), 'ip', '-j', ...args];
  const r = await execCmd(argv, 10_000);
  if (r.code !== 0) throw new PhaulError('failed', `ip ${args.join(' ')}${netns ? ` in ${netns}` : ''}: ${r.stderr.trim().split('\n').pop()}`);
  try {
    return JSON.parse(r.stdout || '[]') as T;
  } catch {
    throw new PhaulError('failed', `ip ${args.join(' ')} printed something that is not JSON`);
  }
}

/** Addresses worth moving: global ones (the kernel makes the link-local ones itself). */
function addrsOf(l: IpLink): IpAddr[] {
  return (l.addr_info ?? [])
    .filter((a) => (a.family === 'inet' || a.family === 'inet6') && a.scope !== 'link' && a.scope !== 'host')
    .map((a) => ({ family: a.family as IpAddr['family'], local: a.local, prefixlen: a.prefixlen }));
}

interface RawRoute { dst: string; gateway?: string; scope?: string; protocol?: string; flags?: string[]; dev?: string }

/** Routes through `dev` in a namespace, both families, except those the kernel derives from addresses. */
async function routesVia(netns: string | undefined, dev: string): Promise<IpRoute[]> {
  const out: IpRoute[] = [];
  for (const family of ['inet', 'inet6'] as const) {
    const rs = await ipJson<RawRoute[]>(netns, [family === 'inet' ? '-4' : '-6', 'route', 'show', 'dev', dev]);
    for (const r of rs) {
      if (r.protocol === 'kernel' || r.dst.startsWith('fe80:') || r.dst.startsWith('ff00:')) continue;
      const route: IpRoute = { family, dst: r.dst };
      if (r.gateway) route.gateway = r.gateway;
      if (r.scope === 'link' || r.scope === 'host') route.scope = r.scope;
      if (r.flags?.includes('onlink')) route.onlink = true;
      out.push(route);
    }
  }
  return out;
}

/** The network namespace a process is in, as an inode (to tell namespaces apart). */
export function netnsInode(nsPath: string): number | undefined {
  try {
    return fs.statSync(nsPath).ino;
  } catch {
    return undefined;
  }
}

/**
 * Reads how the namespace at `netns` is plugged into this host (the agent's
 * own namespace): exactly one veth besides lo, whose peer is here. Anything
 * else is refused with the reason: it would not be rebuilt at the destination.
 */
export async function readNetwork(netns: string): Promise<ContainerNetwork | undefined> {
  const links = await ipJson<IpLink[]>(netns, ['-d', 'addr', 'show']);
  const others = links.filter((l) => l.ifname !== 'lo');
  if (others.length === 0) return undefined; // lo only: nothing to plug in
  const veths = others.filter((l) => l.linkinfo?.info_kind === 'veth');
  const odd = others.find((l) => l.linkinfo?.info_kind !== 'veth');
  if (odd) throw new PhaulError('usage', `the container's network namespace ${netns} has ${odd.ifname} (${odd.linkinfo?.info_kind ?? 'a device'}): only a veth to the host can be rebuilt at the destination`);
  if (veths.length > 1) throw new PhaulError('usage', `the container's network namespace ${netns} has ${veths.length} veths: only one can be rebuilt at the destination`);
  const c = veths[0];
  const hostLinks = await ipJson<IpLink[]>(undefined, ['-d', 'addr', 'show']);
  const h = hostLinks.find((l) => l.ifindex === c.link_index && l.link_index === c.ifindex && l.linkinfo?.info_kind === 'veth');
  if (!h) throw new PhaulError('usage', `the peer of ${c.ifname} in ${netns} is not in this host's network namespace (run migrate where the container's veth is plugged in)`);
  const host: ContainerNetwork['host'] = { ifname: h.ifname, mac: h.address ?? '', mtu: h.mtu ?? 1500, addrs: addrsOf(h),
    routes: await routesVia(undefined, h.ifname), proxyArp: false };
  try {
    host.proxyArp = fs.readFileSync(`/proc/sys/net/ipv4/conf/${h.ifname}/proxy_arp`, 'utf8').trim() === '1';
  } catch { /* no IPv4 on it */ }
  if (h.master) {
    const [br] = await ipJson<IpLink[]>(undefined, ['-d', 'addr', 'show', 'dev', h.master]);
    if (br?.linkinfo?.info_kind !== 'bridge') throw new PhaulError('usage', `${h.ifname}'s master ${h.master} is not a bridge`);
    host.bridge = { name: h.master, addrs: addrsOf(br) };
  }
  const network: ContainerNetwork = {
    container: { ifname: c.ifname, mac: c.address ?? '', mtu: c.mtu ?? 1500, addrs: addrsOf(c), routes: await routesVia(netns, c.ifname) },
    host,
  };
  return checkNetwork(network);
}

// ---- the destination's check of a description from the network ----

function bad(what: string): PhaulError {
  return new PhaulError('protocol', `bad container network (${what})`);
}

function ifname(v: unknown, what: string): string {
  if (typeof v !== 'string' || !IFNAME.test(v)) throw bad(`${what} name`);
  return v;
}

function veth(v: Record<string, unknown>, what: string): VethEnd {
  const mac = v.mac;
  const mtu = v.mtu;
  if (typeof mac !== 'string' || !MAC.test(mac)) throw bad(`${what} MAC`);
  if (typeof mtu !== 'number' || !Number.isInteger(mtu) || mtu < 68 || mtu > 65535) throw bad(`${what} MTU`);
  return { ifname: ifname(v.ifname, what), mac, mtu };
}

function family(v: unknown): IpAddr['family'] {
  if (v !== 'inet' && v !== 'inet6') throw bad('family');
  return v;
}

function ipOf(v: unknown, fam: IpAddr['family']): string {
  if (typeof v !== 'string' || net.isIP(v) !== (fam === 'inet' ? 4 : 6)) throw bad('address');
  return v;
}

function list(v: unknown, what: string): Record<string, unknown>[] {
  if (!Array.isArray(v) || v.length > MAX_ITEMS || v.some((x) => !x || typeof x !== 'object')) throw bad(what);
  return v as Record<string, unknown>[];
}

function addrs(v: unknown): IpAddr[] {
  return list(v, 'addresses').map((a) => {
    const fam = family(a.family);
    const len = a.prefixlen;
    if (typeof len !== 'number' || !Number.isInteger(len) || len < 0 || len > (fam === 'inet' ? 32 : 128)) throw bad('prefix length');
    return { family: fam, local: ipOf(a.local, fam), prefixlen: len };
  });
}

function routes(v: unknown): IpRoute[] {
  return list(v, 'routes').map((r) => {
    const fam = family(r.family);
    const dst = r.dst;
    if (typeof dst !== 'string') throw bad('route');
    if (dst !== 'default') {
      const [a, len, more] = dst.split('/');
      ipOf(a, fam);
      if (more !== undefined || (len !== undefined && !(/^\d{1,3}$/.test(len) && Number(len) <= (fam === 'inet' ? 32 : 128)))) throw bad('route prefix');
    }
    const out: IpRoute = { family: fam, dst };
    if (r.gateway !== undefined) out.gateway = ipOf(r.gateway, fam);
    if (r.scope !== undefined) {
      if (r.scope !== 'link' && r.scope !== 'host') throw bad('route scope');
      out.scope = r.scope;
    }
    if (r.onlink === true) out.onlink = true;
    return out;
  });
}

/** A description from the network (or our own reading, checked the same way). */
export function checkNetwork(raw: unknown): ContainerNetwork {
  const n = raw as Record<string, unknown> | null;
  if (!n || typeof n !== 'object') throw bad('not a map');
  const c = n.container as Record<string, unknown> | null;
  const h = n.host as Record<string, unknown> | null;
  if (!c || typeof c !== 'object' || !h || typeof h !== 'object') throw bad('ends');
  const host: ContainerNetwork['host'] = { ...veth(h, 'host end'), addrs: addrs(h.addrs), routes: routes(h.routes), proxyArp: h.proxyArp === true };
  if (h.bridge !== undefined) {
    const b = h.bridge as Record<string, unknown> | null;
    if (!b || typeof b !== 'object') throw bad('bridge');
    host.bridge = { name: ifname(b.name, 'bridge'), addrs: addrs(b.addrs) };
  }
  return { container: { ...veth(c, 'container end'), addrs: addrs(c.addrs), routes: routes(c.routes) }, host };
}

/** `ip` arguments that recreate a route through `dev`. */
export function routeArgs(r: IpRoute, dev: string): string[] {
  const a = [r.family === 'inet' ? '-4' : '-6', 'route', 'replace', r.dst];
  if (r.gateway) a.push('via', r.gateway);
  a.push('dev', dev);
  if (r.scope) a.push('scope', r.scope);
  if (r.onlink) a.push('onlink');
  return a;
}

/** The container's addresses as host routes (ADDRESS/32 or /128). */
export function hostPrefixes(n: ContainerNetwork): { family: IpAddr['family']; prefix: string }[] {
  return n.container.addrs.map((a) => ({ family: a.family, prefix: `${a.local}/${a.family === 'inet' ? 32 : 128}` }));
}

/** Named namespaces (`ip netns`) live here; only those are ours to delete by name. */
export function namedNetns(nsPath: string): string | undefined {
  const dir = path.dirname(nsPath);
  return dir === '/run/netns' || dir === '/var/run/netns' ? path.basename(nsPath) : undefined;
}
