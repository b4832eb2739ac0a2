// criu:lazy — CRIU's post-copy, as docs/BENCH.md "The matrix" describes it:
//   S: criu dump -t PID -D src --lazy-pages --address A --port P
//   copy images;  D: criu lazy-pages --page-server --address A --port P -D dst
//   D: criu restore --lazy-pages -D dst -d
// The workload runs on D as soon as restore returns; its memory follows in
// the background (and on faults). The source is needed until the dump exits,
// which it does once the lazy-pages daemon has fetched every page.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { inHost } from '../../src/testing/hosts';
import { startCmd, type StartedCmd } from '../../src/testing/proc';
import { copyImages, criuRestore, logTail, tcpArgs, waitStatus, watchFreeze } from './common';
import type { Peer, PeerContext, RunFigures, RunHooks } from './types';

export class CriuLazy implements Peer {
  readonly name = 'criu:lazy';

  async open(): Promise<void> {
    // Lazy dumps splice pages into pipes and fail below 4 MiB ones (docs/DESIGN.md section 2).
    const cur = Number(fs.readFileSync('/proc/sys/fs/pipe-max-size', 'utf8'));
    if (cur < 4 << 20) fs.writeFileSync('/proc/sys/fs/pipe-max-size', String(4 << 20));
  }

  async migrate(pid: number, ctx: PeerContext, hooks: RunHooks): Promise<RunFigures> {
    const src = path.join(ctx.runDir, 'src');
    const dst = path.join(ctx.runDir, 'dst');
    fs.mkdirSync(src, { recursive: true });
    fs.mkdirSync(dst, { recursive: true });
    const big = 60_000 + ctx.memMiB * 100;
    const started: StartedCmd[] = [];
    const t0 = performance.now();
    const freeze = watchFreeze(pid);
    try {
      // The source's page server listens on the source's address; a socketpair
      // (--ps-socket) would be safer but is not what CRIU's CLI peers do.
      const dump = startCmd(inHost(ctx.src, [ctx.criu, 'dump', '-t', String(pid), '-D', src, '--lazy-pages',
        '--address', ctx.src.addr, '--port', String(ctx.port), '-o', 'dump.log', '--status-fd', '4', ...tcpArgs(ctx)]), { statusFd: true, timeoutMs: big });
      started.push(dump);
      await waitStatus(dump.status!, dump.done, 'criu dump --lazy-pages', 30_000)
        .catch((e) => { throw new Error(`${e.message}: ${logTail(path.join(src, 'dump.log'))}`); });
      const frozenAt = freeze.stop() ?? t0;
      const copied = copyImages(src, dst);

      const lazy = startCmd(inHost(ctx.dst, [ctx.criu, 'lazy-pages', '--page-server', '--address', ctx.src.addr,
        '--port', String(ctx.port), '-D', dst, '-o', 'lazy-pages.log', '--status-fd', '4']), { statusFd: true, timeoutMs: big });
      started.push(lazy);
      await waitStatus(lazy.status!, lazy.done, 'criu lazy-pages', 10_000)
        .catch((e) => { throw new Error(`${e.message}: ${logTail(path.join(dst, 'lazy-pages.log'))}`); });

      const rs = await criuRestore(ctx.criu, ctx.dst, dst, big, ['--lazy-pages', ...tcpArgs(ctx)]);
      const tRun = rs.runningAt;
      const restoredPid = rs.pid;
      hooks.onRunning(restoredPid);

      const [lz, dp] = await Promise.all([
        lazy.done.then((r) => ({ r, at: performance.now() })),
        dump.done.then((r) => ({ r, at: performance.now() })),
      ]);
      if (lz.r.code !== 0) throw new Error(`criu lazy-pages${lz.r.code === null ? ' timed out' : ''}: ${logTail(path.join(dst, 'lazy-pages.log'))}`);
      if (dp.r.code !== 0) throw new Error(`criu dump --lazy-pages${dp.r.code === null ? ' timed out' : ''}: ${logTail(path.join(src, 'dump.log'))}`);
      return {
        restoredPid,
        downtimeMs: tRun - frozenAt,
        totalMs: Math.max(lz.at, dp.at) - t0,
        sourceFreeMs: dp.at - t0,
        offLinkBytes: copied,
        rounds: 1,
        cpuS: dp.r.cpuS + lz.r.cpuS + rs.r.cpuS,
        cpuSourceS: dp.r.cpuS,
      };
    } finally {
      freeze.stop();
      for (const c of started) c.kill();
    }
  }

  async close(): Promise<void> {}
}
