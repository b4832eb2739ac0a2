// CRIU's network lock, lifted after a rollback. CRIU locks the network for a
// dump (an nftables table `inet CRIU-<id>` in the tree's network namespace)
// and puts the TCP sockets it dumps into repair mode; it undoes both only when
// the dump fails before its images are complete. A lazy dump rolled back
// later (SIGALRM) and a dump that succeeded but whose restore failed elsewhere
// resume the tree with both still in place: its connections would hang. So
// after any rollback we delete CRIU's tables in the tree's own namespace (not
// in ours: other CRIU runs may hold tables there) and take the tree's sockets
// out of repair mode.
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import { addon } from '../native';

function run(argv: string[]): Promise<{ code: number; stdout: string }> {
  return new Promise((resolve) => {
    execFile(argv[0], argv.slice(1), { timeout: 10_000 }, (err, stdout) => resolve({ code: err ? 1 : 0, stdout: String(stdout) }));
  });
}

function inode(p: string): number | undefined {
  try {
    return fs.statSync(p).ino;
  } catch {
    return undefined;
  }
}

/** Deletes CRIU's lock tables from the namespace at `nsPath`; returns their names. */
export async function removeCriuLockTables(nsPath: string): Promise<string[]> {
  const r = await run(['nsenter', `--net=${nsPath}`, 'nft', '-j', 'list', 'tables', 'inet']);
  if (r.code !== 0) return [];
  let names: string[] = [];
  try {
    const j = JSON.parse(r.stdout) as { nftables?: { table?: { name?: unknown } }[] };
    names = (j.nftables ?? []).map((e) => e.table?.name).filter((n): n is string => typeof n === 'string' && /^CRIU-[A-Za-z0-9-]+$/.test(n));
  } catch { /* no tables */ }
  for (const n of names) await run(['nsenter', `--net=${nsPath}`, 'nft', 'delete', 'table', 'inet', n]);
  return names;
}

/**
 * After a rollback: CRIU's lock gone from the tree's network namespace
 * (`nsPath`, default the first pid's) and its TCP sockets out of repair mode.
 * Returns what it did, for the log.
 */
export async function releaseCriuNetworkLock(pids: number[], nsPath?: string): Promise<string> {
  const ns = nsPath ?? (pids.length ? `/proc/${pids[0]}/ns/net` : undefined);
  const tables = ns && inode(ns) !== inode('/proc/self/ns/net') ? await removeCriuLockTables(ns) : [];
  let released = 0;
  let sockets = 0;
  const problems: string[] = [];
  for (const pid of pids) {
    try {
      const r = addon().tcpRepairOff(pid);
      released += r.released;
      sockets += r.sockets;
    } catch (e) {
      problems.push(`pid ${pid}: ${(e as Error).message}`);
    }
  }
  return `${tables.length} CRIU lock table(s) removed, ${released} of ${sockets} TCP socket(s) out of repair mode` +
    (problems.length ? ` (${problems.join('; ')})` : '');
}
