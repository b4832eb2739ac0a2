// The destination rebuilds what a moved container's network namespace was
// plugged into (src/container/network.ts describes it): a new named namespace
// with the container's end of a veth (same name, MAC, MTU, addresses, routes)
// and the host's end here (in the same bridge, or with the same host routes).
// Until the commit the namespace is locked by an nftables table of ours, so
// that the restored (stopped) copy's sockets can say nothing to the peers the
// source's original still talks to: not a retransmission, and not the RST a
// rollback's kill would send.
import * as fs from 'node:fs';
import { PhaulError } from '../errors';
import { ContainerNetwork, hostPrefixes, IpAddr, routeArgs } from './network';
import { execCmd } from './runc';

const LOCK_TABLE = 'phaul-lock';
/** libsoccr marks the packets CRIU itself must send while restoring (CRIU's own lock lets them pass too). */
const SOCCR_MARK = 0xc114;

async function run(argv: string[], what: string): Promise<void> {
  const r = await execCmd(argv, 10_000);
  if (r.code !== 0) throw new PhaulError('failed', `${what}: ${r.stderr.trim().split('\n').pop() ?? `exit ${r.code}`}`);
}

function ip(args: string[]): Promise<void> {
  return run(['ip', ...args], `ip ${args.join(' ')}`);
}

function nftIn(nsPath: string, cmd: string): Promise<void> {
  return run(['nsenter', `--net=${nsPath}`, 'nft', cmd], `nft in ${nsPath}`);
}

/** An address as it was, without IPv6's duplicate detection (the address just left the source). */
function addrArgs(a: IpAddr, dev: string): string[] {
  return ['addr', 'add', `${a.local}/${a.prefixlen}`, 'dev', dev, ...(a.family === 'inet6' ? ['nodad'] : [])];
}

function linkExists(name: string): boolean {
  return fs.existsSync(`/sys/class/net/${name}`);
}

function enableForwarding(n: ContainerNetwork): void {
  // The host routes the container's traffic (as CNI's plugins set it up).
  if (n.container.addrs.some((a) => a.family === 'inet')) fs.writeFileSync('/proc/sys/net/ipv4/ip_forward', '1');
  if (n.container.addrs.some((a) => a.family === 'inet6')) fs.writeFileSync('/proc/sys/net/ipv6/conf/all/forwarding', '1');
}

export class NetworkPlumbing {
  private made = false;
  private madeBridge = false;
  private locked = false;

  /** `network` undefined: the namespace had only lo at the source, and gets only lo here. */
  constructor(readonly network: ContainerNetwork | undefined, readonly nsName: string) {}

  get nsPath(): string {
    return `/run/netns/${this.nsName}`;
  }

  /** Refuses what would collide here: the namespace's name, the host end's name. */
  check(): void {
    if (fs.existsSync(this.nsPath)) throw new PhaulError('failed', `the destination already has a network namespace ${this.nsName}`);
    if (!this.network) return;
    const h = this.network.host.ifname;
    if (linkExists(h)) throw new PhaulError('failed', `the destination already has a network device ${h} (the container's host-side veth)`);
    const br = this.network.host.bridge;
    if (br && linkExists(br.name) && !fs.existsSync(`/sys/class/net/${br.name}/bridge`)) throw new PhaulError('failed', `the destination's ${br.name} is not a bridge`);
  }

  /** Builds the namespace, locked, and plugs it in here. On failure, removes what it made. */
  async plug(): Promise<void> {
    this.check();
    const n = this.network;
    const ns = this.nsName;
    try {
      await ip(['netns', 'add', ns]);
      this.made = true;
      await nftIn(this.nsPath, `add table inet ${LOCK_TABLE}; ` +
        `add chain inet ${LOCK_TABLE} input { type filter hook input priority -10; policy drop; }; ` +
        `add chain inet ${LOCK_TABLE} output { type filter hook output priority -10; policy drop; }; ` +
        `add rule inet ${LOCK_TABLE} input meta mark ${SOCCR_MARK} accept; add rule inet ${LOCK_TABLE} output meta mark ${SOCCR_MARK} accept`);
      this.locked = true;
      await ip(['-n', ns, 'link', 'set', 'lo', 'up']);
      if (!n) return;
      const c = n.container;
      const h = n.host;
      await ip(['link', 'add', h.ifname, 'address', h.mac, 'mtu', String(h.mtu), 'type', 'veth',
        'peer', 'name', c.ifname, 'address', c.mac, 'mtu', String(c.mtu), 'netns', ns]);
      for (const a of c.addrs) await ip(['-n', ns, ...addrArgs(a, c.ifname)]);
      for (const a of h.addrs) await ip(addrArgs(a, h.ifname));
      await ip(['-n', ns, 'link', 'set', c.ifname, 'up']);
      if (h.bridge) {
        if (!linkExists(h.bridge.name)) {
          await ip(['link', 'add', h.bridge.name, 'type', 'bridge']);
          this.madeBridge = true;
          for (const a of h.bridge.addrs) await ip(addrArgs(a, h.bridge.name));
          await ip(['link', 'set', h.bridge.name, 'up']);
        }
        await ip(['link', 'set', h.ifname, 'master', h.bridge.name]);
      }
      if (h.proxyArp) fs.writeFileSync(`/proc/sys/net/ipv4/conf/${h.ifname}/proxy_arp`, '1');
      await ip(['link', 'set', h.ifname, 'up']);
      // Routes last: a gateway route needs its link up. The container's first
      // (its default route may go through one of the scope-link ones).
      const ordered = [...c.routes].sort((x, y) => Number(!x.scope) - Number(!y.scope));
      for (const r of ordered) await ip(['-n', ns, ...routeArgs(r, c.ifname)]);
      for (const r of h.routes) await ip(routeArgs(r, h.ifname));
      enableForwarding(n);
    } catch (e) {
      await this.unplug();
      throw e instanceof PhaulError ? e : new PhaulError('failed', `cannot rebuild the container's network: ${(e as Error).message}`);
    }
  }

  /** At the commit: the restored sockets may talk. */
  async open(): Promise<void> {
    if (!this.locked) return;
    await nftIn(this.nsPath, `delete table inet ${LOCK_TABLE}`);
    this.locked = false;
  }

  /** Before the commit: the namespace goes (and with it the veth pair and its routes); a bridge we made too. */
  async unplug(): Promise<void> {
    if (this.made) await run(['ip', 'netns', 'del', this.nsName], 'ip netns del').catch(() => undefined);
    if (this.madeBridge) await run(['ip', 'link', 'del', this.network!.host.bridge!.name], 'ip link del').catch(() => undefined);
    this.made = false;
    this.madeBridge = false;
    this.locked = false;
  }

  /** The container's addresses, for the report. */
  addresses(): string[] {
    return this.network ? hostPrefixes(this.network).map((p) => p.prefix) : [];
  }
}
