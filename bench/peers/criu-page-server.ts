// criu:page-server — CRIU's own stop-and-copy, as docs/BENCH.md "The matrix" describes it:
//   D: criu page-server -D dst --address A --port P
//   S: criu dump -t PID -D src --page-server --address A --port P
//   copy src/* to dst;  D: criu restore -D dst -d
// The page server starts before the clock, as a waiting destination agent
// would (phaul-fast's serve is also running before its migrations start).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { inHost } from '../../src/testing/hosts';
import { runCmd } from '../../src/testing/proc';
import { copyImages, startPageServer, criuRestore, logTail, stopCopyFigures, tcpArgs, watchFreeze } from './common';
import type { Peer, PeerContext, RunFigures, RunHooks } from './types';

export class CriuPageServer implements Peer {
  readonly name = 'criu:page-server';

  async open(): Promise<void> {}

  async migrate(pid: number, ctx: PeerContext, hooks: RunHooks): Promise<RunFigures> {
    const src = path.join(ctx.runDir, 'src');
    const dst = path.join(ctx.runDir, 'dst');
    fs.mkdirSync(src, { recursive: true });
    fs.mkdirSync(dst, { recursive: true });
    const big = 60_000 + ctx.memMiB * 100; // generous: 1 Gbit/s moves a MiB in ~8 ms

    const ps = await startPageServer(ctx, dst, big);
    try {

      const t0 = performance.now();
      const freeze = watchFreeze(pid);
      const dump = await runCmd(inHost(ctx.src, [ctx.criu, 'dump', '-t', String(pid), '-D', src, '--page-server',
        '--address', ctx.dst.addr, '--port', String(ctx.port), '-o', 'dump.log', ...tcpArgs(ctx)]), { timeoutMs: big })
        .finally(() => freeze.stop());
      const dumpMs = performance.now() - t0;
      const frozenAt = freeze.stop() ?? t0;
      if (dump.code !== 0) throw new Error(`criu dump: ${logTail(path.join(src, 'dump.log'))}`);
      const psr = await ps.done;
      if (psr.code !== 0) throw new Error(`criu page-server: ${logTail(path.join(dst, 'page-server.log'))}`);
      // What the page server received (its pages files) before the images are copied over.
      const pageBytes = fs.readdirSync(dst).filter((f) => /^pages-\d+\.img$/.test(f)).reduce((n, f) => n + fs.statSync(path.join(dst, f)).size, 0);
      const copied = copyImages(src, dst);
      const tFree = performance.now();

      const rs = await criuRestore(ctx.criu, ctx.dst, dst, big, tcpArgs(ctx));
      hooks.onRunning(rs.pid);
      // The parasite's page sending runs in the frozen workload and is not counted (see docs/BENCH.md).
      return { ...stopCopyFigures({ start: t0, frozen: frozenAt, free: tFree }, rs, copied, { source: dump.cpuS, destination: psr.cpuS + rs.r.cpuS }),
        copyMBps: pageBytes / 1e6 / (dumpMs / 1000) };
    } finally {
      ps.kill();
    }
  }

  async close(): Promise<void> {}
}
