// criu:local — CRIU's own dump and restore through a tmpfs directory, no
// network at all: what a user gets from CRIU alone on one machine, and the
// floor of any pause that dumps and restores whole memory:
//   S: criu dump -t PID -D dir          D: criu restore -D dir -d
// (the "hosts" share the machine, so the destination reads the source's files).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { inHost } from '../../src/testing/hosts';
import { runCmd } from '../../src/testing/proc';
import { criuRestore, logTail, stopCopyFigures, tcpArgs, watchFreeze } from './common';
import type { Peer, PeerContext, RunFigures, RunHooks } from './types';

export class CriuLocal implements Peer {
  readonly name = 'criu:local';

  async open(): Promise<void> {}

  async migrate(pid: number, ctx: PeerContext, hooks: RunHooks): Promise<RunFigures> {
    const dir = path.join(ctx.runDir, 'images');
    fs.mkdirSync(dir, { recursive: true });
    const big = 60_000 + ctx.memMiB * 100;
    const t0 = performance.now();
    const freeze = watchFreeze(pid);
    const dump = await runCmd(inHost(ctx.src, [ctx.criu, 'dump', '-t', String(pid), '-D', dir, '-o', 'dump.log', ...tcpArgs(ctx)]), { timeoutMs: big })
      .finally(() => freeze.stop());
    const frozenAt = freeze.stop() ?? t0;
    if (dump.code !== 0) throw new Error(`criu dump: ${logTail(path.join(dir, 'dump.log'))}`);
    const tFree = performance.now();
    let imageBytes = 0;
    for (const f of fs.readdirSync(dir)) if (f.endsWith('.img')) imageBytes += fs.statSync(path.join(dir, f)).size;
    const rs = await criuRestore(ctx.criu, ctx.dst, dir, big, tcpArgs(ctx));
    hooks.onRunning(rs.pid);
    // The parasite's page sending runs in the frozen workload and is not counted (see docs/BENCH.md).
    return stopCopyFigures({ start: t0, frozen: frozenAt, free: tFree }, rs, imageBytes, { source: dump.cpuS, destination: rs.r.cpuS });
  }

  async close(): Promise<void> {}
}
