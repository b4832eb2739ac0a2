// What the destination lets in before and after authentication.
//
// Before: connections that have not authenticated yet are capped per agent
// and per peer address. At a cap the *oldest* pending connection is dropped,
// not the new one: an attacker holding idle connections then cannot lock out
// a real source, whose handshake takes milliseconds, without opening new
// connections faster than it completes. Every pending connection also has the
// handshake deadline (auth.ts HANDSHAKE_MS).
//
// After: a cap on concurrent sessions, and host-wide budgets checked when a
// session declares its size (`prepare`): bytes of pages held at once in page
// stores and session directories (--max-store-bytes), and memory kept free for
// the host (--keep-free-memory). A session that does not fit is refused up
// front ('busy') instead of failing half way. The budgets protect the host
// from honest overload; they are no boundary against a token holder, who can
// run code as root here anyway (docs/SECURITY.md).
import * as fs from 'node:fs';
import type { Socket } from 'node:net';
import { PhaulError } from '../errors';

export interface AdmissionLimits {
  /** Unauthenticated connections held at once, in all. */
  maxPending: number;
  /** Unauthenticated connections held at once from one address. */
  maxPendingPerAddress: number;
  /** Sessions (control connections past authentication) at once. */
  maxSessions: number;
  /** Sum of the sizes sessions declared, at once; Infinity: no cap but free space. */
  maxStoreBytes: number;
  /** Memory that must stay available after every session's declared needs. */
  keepFreeMemory: number;
}

export const DEFAULT_LIMITS: AdmissionLimits = {
  maxPending: 64,
  maxPendingPerAddress: 8,
  maxSessions: 8,
  maxStoreBytes: Infinity,
  keepFreeMemory: 512 * 1024 * 1024,
};

/** Unauthenticated connections, oldest first. */
export class PendingConnections {
  private readonly all = new Set<Socket>();
  private readonly byAddress = new Map<string, Set<Socket>>();
  dropped = 0;

  constructor(private readonly limits: Pick<AdmissionLimits, 'maxPending' | 'maxPendingPerAddress'>) {}

  get size(): number {
    return this.all.size;
  }

  /** Admits sock, dropping the oldest pending connections over the caps. */
  admit(sock: Socket): void {
    const addr = sock.remoteAddress ?? '?';
    let mine = this.byAddress.get(addr);
    if (!mine) this.byAddress.set(addr, (mine = new Set()));
    while (mine.size >= this.limits.maxPendingPerAddress) this.drop(mine.values().next().value as Socket);
    while (this.all.size >= this.limits.maxPending) this.drop(this.all.values().next().value as Socket);
    mine.add(sock);
    this.all.add(sock);
    sock.once('close', () => this.settle(sock));
  }

  /** sock authenticated, or is gone: it no longer counts. */
  settle(sock: Socket): void {
    if (!this.all.delete(sock)) return;
    const addr = sock.remoteAddress ?? '?';
    const mine = this.byAddress.get(addr);
    mine?.delete(sock);
    if (mine && mine.size === 0) this.byAddress.delete(addr);
  }

  private drop(sock: Socket): void {
    this.settle(sock);
    this.dropped++;
    sock.destroy();
  }
}

/** Bytes available to unprivileged allocation now (MemAvailable), or Infinity if unknown. */
export function availableMemory(): number {
  try {
    const m = /^MemAvailable:\s+(\d+) kB/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'));
    if (m) return Number(m[1]) * 1024;
  } catch { /* no /proc */ }
  return Infinity;
}

const TMPFS_MAGIC = 0x01021994;

/** Free bytes of dir's file system, and whether it lives in memory (tmpfs). */
export function fileSystemRoom(dir: string): { free: number; inMemory: boolean } {
  try {
    const s = fs.statfsSync(dir);
    return { free: s.bavail * s.bsize, inMemory: s.type === TMPFS_MAGIC };
  } catch {
    return { free: Infinity, inMemory: false };
  }
}

export interface Reservation {
  bytes: number;
  release(): void;
}

/** Host-wide budget of the sessions' declared sizes. */
export class SessionBudget {
  private readonly held = new Set<{ bytes: number; memory: number; dir: string }>();

  constructor(private readonly limits: Pick<AdmissionLimits, 'maxStoreBytes' | 'keepFreeMemory'>,
              private readonly probe = { availableMemory, fileSystemRoom }) {}

  get reservedBytes(): number {
    let n = 0;
    for (const r of this.held) n += r.bytes;
    return n;
  }

  /**
   * Reserves room for a session that will hold `bytes` of pages in `dir` and
   * restore a workload of `bytes`; throws 'busy' with the reason if it does
   * not fit next to the sessions already running.
   */
  reserve(bytes: number, dir: string): Reservation {
    const room = this.probe.fileSystemRoom(dir);
    const memory = bytes + (room.inMemory ? bytes : 0);
    let others = 0;
    let othersMemory = 0;
    let othersHere = 0;
    for (const r of this.held) {
      others += r.bytes;
      othersMemory += r.memory;
      if (r.dir === dir) othersHere += r.bytes;
    }
    const mib = (n: number) => `${Math.ceil(n / 1048576)} MiB`;
    if (others + bytes > this.limits.maxStoreBytes)
      throw new PhaulError('busy', `the destination's page budget (--max-store-bytes ${mib(this.limits.maxStoreBytes)}) ` +
        `cannot take ${mib(bytes)} more (${mib(others)} held by running sessions)`);
    // Running sessions' files are partly written already: counting them whole again is on the safe side.
    if (othersHere + bytes > room.free)
      throw new PhaulError('busy', `${dir} has ${mib(room.free)} free, not enough for ${mib(bytes)} ` +
        `(${mib(othersHere)} promised to running sessions)`);
    const avail = this.probe.availableMemory();
    if (avail - othersMemory - memory < this.limits.keepFreeMemory)
      throw new PhaulError('busy', `the destination has ${mib(avail)} of memory available; ${mib(memory)} more ` +
        `(${mib(othersMemory)} promised to running sessions) would leave less than --keep-free-memory ${mib(this.limits.keepFreeMemory)}`);
    const r = { bytes, memory, dir };
    this.held.add(r);
    return { bytes, release: () => { this.held.delete(r); } };
  }
}
