// Two "hosts" on one machine: two network namespaces joined by a veth pair,
// optionally shaped with tc tbf (netem is absent in this kernel). Processes
// enter a host with `nsenter --net=/run/netns/NAME` only: `ip netns exec`
// would also create a mount namespace, which CRIU then has to deal with.
import * as fs from 'node:fs';
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { PhaulError } from '../errors';
import { isAlive, runCmd, type RunResult } from './proc';

export interface Host {
  /** Namespace name, or 'local' for the machine's own network namespace. */
  name: string;
  /** /run/netns/NAME, or null for the machine's own network namespace. */
  netnsPath: string | null;
  /** This host's address on the link. */
  addr: string;
}

export interface TwoHosts {
  a: Host;
  b: Host;
  /** Limits each direction of the link to rateMbit with tbf; null removes the limit. */
  shape(rateMbit: number | null): Promise<void>;
  run(host: Host, argv: string[], opts?: SpawnOptions & { timeoutMs?: number }): Promise<RunResult>;
  spawn(host: Host, argv: string[], opts?: SpawnOptions): ChildProcess;
  /**
   * Bytes sent on the link so far, both directions (veth: tx of each end;
   * one-host loopback: tx of its lo). Counters of our own namespaces only, so
   * other traffic on the machine never counts.
   */
  linkBytes(): Promise<number>;
  /** Removes both namespaces (and with them the veth pair and qdiscs); idempotent. */
  destroy(): Promise<void>;
}

/** The machine itself as a host: the "loopback" link of the benchmarks. */
export const LOCAL_HOST: Host = { name: 'local', netnsPath: null, addr: '127.0.0.1' };

/** argv prefixed so that it runs inside host's network namespace. */
export function inHost(host: Host, argv: string[]): string[] {
  return host.netnsPath ? ['nsenter', `--net=${host.netnsPath}`, ...argv] : argv;
}

export function runIn(host: Host, argv: string[], opts: SpawnOptions & { timeoutMs?: number; input?: string } = {}): Promise<RunResult> {
  return runCmd(inHost(host, argv), opts);
}

export function spawnIn(host: Host, argv: string[], opts: SpawnOptions = {}): ChildProcess {
  const full = inHost(host, argv);
  return spawn(full[0], full.slice(1), opts);
}

const IFACE = 'veth0';
let counter = 0;

async function ip(...args: string[]): Promise<void> {
  const r = await runCmd(['ip', ...args], { timeoutMs: 10_000 });
  if (r.code !== 0) throw new PhaulError('failed', `ip ${args.join(' ')}: ${r.stderr.trim()}`);
}

/**
 * Names are PREFIX-<creator pid>-<n>-a/b, so a later run can tell our stale
 * namespaces (creator dead, e.g. after a crash) from those of a run still going.
 */
async function removeStale(prefix: string): Promise<void> {
  let names: string[] = [];
  try {
    names = fs.readdirSync('/run/netns');
  } catch {
    return;
  }
  const re = new RegExp(`^${prefix.replace(/[^a-zA-Z0-9]/g, '\\$&')}-(\\d+)-\\d+-[ab]$`);
  for (const n of names) {
    const m = re.exec(n);
    if (m && Number(m[1]) !== process.pid && !isAlive(Number(m[1]))) {
      await runCmd(['ip', 'netns', 'del', n], { timeoutMs: 10_000 });
    }
  }
}

async function txBytes(ns: string, dev: string): Promise<number> {
  const r = await runCmd(['ip', '-n', ns, '-j', '-s', 'link', 'show', 'dev', dev], { timeoutMs: 10_000 });
  if (r.code !== 0) throw new PhaulError('failed', `ip -s link in ${ns}: ${r.stderr.trim()}`);
  const j = JSON.parse(r.stdout) as Array<{ stats64?: { tx?: { bytes?: number } } }>;
  return j[0]?.stats64?.tx?.bytes ?? 0;
}

/**
 * One network namespace with only lo, playing both hosts at 127.0.0.1: the
 * "loopback" link. A namespace of its own (rather than the machine's) keeps
 * its byte counter clean and its ports free of anything else running here.
 */
export async function createLoopbackHost(opts: { prefix?: string } = {}): Promise<TwoHosts> {
  const prefix = opts.prefix ?? 'pft';
  if (!/^[a-zA-Z0-9_]{1,12}$/.test(prefix)) throw new PhaulError('usage', `bad host prefix '${prefix}'`);
  await removeStale(prefix);
  const name = `${prefix}-${process.pid}-${counter++}-a`;
  const h: Host = { name, netnsPath: `/run/netns/${name}`, addr: '127.0.0.1' };
  let destroyed = false;
  const destroy = async () => {
    if (destroyed) return;
    destroyed = true;
    if (fs.existsSync(h.netnsPath!)) await runCmd(['ip', 'netns', 'del', name], { timeoutMs: 10_000 });
  };
  try {
    await ip('netns', 'add', name);
    await ip('-n', name, 'link', 'set', 'lo', 'up');
  } catch (e) {
    await destroy();
    throw e;
  }
  return {
    a: h,
    b: h,
    shape: async (rate) => {
      if (rate !== null) throw new PhaulError('usage', 'a loopback link cannot be shaped');
    },
    run: (host, argv, o) => runIn(host, argv, o),
    spawn: (host, argv, o) => spawnIn(host, argv, o),
    linkBytes: () => txBytes(name, 'lo'),
    destroy,
  };
}

export async function createTwoHosts(opts: { prefix?: string; rateMbit?: number } = {}): Promise<TwoHosts> {
  const prefix = opts.prefix ?? 'pft';
  if (!/^[a-zA-Z0-9_]{1,12}$/.test(prefix)) throw new PhaulError('usage', `bad host prefix '${prefix}'`);
  await removeStale(prefix);
  const n = counter++;
  const base = `${prefix}-${process.pid}-${n}`;
  // Each pair lives in its own namespaces, so the subnet may repeat across pairs.
  const net = `10.77.${n % 250}`;
  const a: Host = { name: `${base}-a`, netnsPath: `/run/netns/${base}-a`, addr: `${net}.1` };
  const b: Host = { name: `${base}-b`, netnsPath: `/run/netns/${base}-b`, addr: `${net}.2` };
  let destroyed = false;

  const destroy = async () => {
    if (destroyed) return;
    destroyed = true;
    // Deleting a namespace deletes the veth end in it, which deletes its peer.
    for (const h of [a, b]) if (fs.existsSync(h.netnsPath!)) await runCmd(['ip', 'netns', 'del', h.name], { timeoutMs: 10_000 });
  };

  try {
    await ip('netns', 'add', a.name);
    await ip('netns', 'add', b.name);
    // Created directly inside the namespaces: nothing appears in the host's own.
    await ip('link', 'add', IFACE, 'netns', a.name, 'type', 'veth', 'peer', 'name', IFACE, 'netns', b.name);
    for (const h of [a, b]) {
      await ip('-n', h.name, 'addr', 'add', `${h.addr}/24`, 'dev', IFACE);
      await ip('-n', h.name, 'link', 'set', 'lo', 'up');
      await ip('-n', h.name, 'link', 'set', IFACE, 'up');
    }
  } catch (e) {
    await destroy();
    throw e;
  }

  const shape = async (rateMbit: number | null) => {
    for (const h of [a, b]) {
      if (rateMbit === null) {
        await runCmd(['tc', '-n', h.name, 'qdisc', 'del', 'dev', IFACE, 'root'], { timeoutMs: 10_000 });
        continue;
      }
      // tbf needs burst >= rate / HZ or it cannot reach the rate; a generous
      // burst (10 ms of traffic, at least 64 KiB for GSO packets) keeps the
      // shaper from being the bottleneck below the rate it promises.
      const burst = Math.max(64 * 1024, Math.ceil((rateMbit * 1e6) / 8 / 100));
      const r = await runCmd(['tc', '-n', h.name, 'qdisc', 'replace', 'dev', IFACE, 'root', 'tbf',
        'rate', `${rateMbit}mbit`, 'burst', String(burst), 'latency', '50ms'], { timeoutMs: 10_000 });
      if (r.code !== 0) throw new PhaulError('failed', `tc on ${h.name}: ${r.stderr.trim()}`);
    }
  };
  if (opts.rateMbit) await shape(opts.rateMbit);

  return {
    a,
    b,
    shape,
    run: (h, argv, o) => runIn(h, argv, o),
    spawn: (h, argv, o) => spawnIn(h, argv, o),
    linkBytes: async () => (await txBytes(a.name, IFACE)) + (await txBytes(b.name, IFACE)),
    destroy,
  };
}
