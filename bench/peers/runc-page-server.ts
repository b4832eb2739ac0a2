// runc:page-server — runc's own migration path for a container, as docs/BENCH.md "The matrix" describes it:
//   D: criu page-server -D dst --address A --port P
//   S: runc checkpoint --page-server A:P --image-path src --work-path src ID
//   copy src/* to dst;  D: runc restore --detach --image-path dst --work-path dst --bundle B ID
// The destination's bundle (config.json and rootfs) is copied before the
// clock starts, as if both hosts had it already: runc's path has no way to
// move it, and not charging it for one only favours runc. runc runs CRIU with
// /etc/criu/runc.conf (scripts/setup.sh makes its network lock nftables).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { findRunc } from '../../src/container/runc';
import { inHost } from '../../src/testing/hosts';
import { runCmd } from '../../src/testing/proc';
import { containerHosts } from '../workloads/container';
import { copyImages, startPageServer, logTail, stopCopyFigures, watchFreeze } from './common';
import { type Peer, type PeerContext, type RunFigures, type RunHooks, Unavailable } from './types';

export class RuncPageServer implements Peer {
  readonly name = 'runc:page-server';

  async open(): Promise<void> {
    if (!findRunc()) throw new Unavailable('runc is not installed');
  }

  async migrate(pid: number, ctx: PeerContext, hooks: RunHooks): Promise<RunFigures> {
    const c = ctx.container;
    if (!c) throw new Error('runc:page-server moves containers only');
    const runc = findRunc()!;
    const h = containerHosts(c.cellDir);
    const src = path.join(ctx.runDir, 'src');
    const dst = path.join(ctx.runDir, 'dst');
    fs.mkdirSync(src, { recursive: true });
    fs.mkdirSync(dst, { recursive: true });
    const big = 60_000 + ctx.memMiB * 100;

    // The destination's own bundle, in its own cgroup (the two hosts share /sys/fs/cgroup).
    const state = JSON.parse((await runCmd([runc, '--root', h.runcSrc, 'state', c.id], { timeoutMs: 20_000 })).stdout || '{}');
    const bundle = path.join(ctx.runDir, 'bundle-dst');
    const cp = await runCmd(['cp', '-a', String(state.bundle), bundle], { timeoutMs: 60_000 });
    if (cp.code !== 0) throw new Error(`copying the bundle: ${cp.stderr.trim()}`);
    const cfgFile = path.join(bundle, 'config.json');
    const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8'));
    cfg.root.path = path.join(bundle, 'rootfs');
    cfg.linux.cgroupsPath = `/${h.cgDst}/${c.id}`;
    fs.writeFileSync(cfgFile, JSON.stringify(cfg));

    const ps = await startPageServer(ctx, dst, big);
    try {
      const t0 = performance.now();
      const freeze = watchFreeze(pid);
      const dump = await runCmd(inHost(ctx.src, [runc, '--root', h.runcSrc, '--criu', ctx.criu, 'checkpoint', '--image-path', src,
        '--work-path', src, '--page-server', `${ctx.dst.addr}:${ctx.port}`, c.id]), { timeoutMs: big })
        .finally(() => freeze.stop());
      const frozenAt = freeze.stop() ?? t0;
      if (dump.code !== 0) throw new Error(`runc checkpoint: ${logTail(path.join(src, 'dump.log'))} ${dump.stderr.trim().split('\n').pop()}`);
      const psr = await ps.done;
      if (psr.code !== 0) throw new Error(`criu page-server: ${logTail(path.join(dst, 'page-server.log'))}`);
      const copied = copyImages(src, dst);
      const tFree = performance.now();

      fs.mkdirSync(h.runcDst, { recursive: true });
      const rs = await runCmd(inHost(ctx.dst, [runc, '--root', h.runcDst, '--criu', ctx.criu, 'restore', '--detach', '--image-path', dst,
        '--work-path', dst, '--bundle', bundle, c.id]), { timeoutMs: big });
      const runningAt = performance.now();
      if (rs.code !== 0) throw new Error(`runc restore: ${logTail(path.join(dst, 'restore.log'))} ${rs.stderr.trim().split('\n').pop()}`);
      const st = JSON.parse((await runCmd([runc, '--root', h.runcDst, 'state', c.id], { timeoutMs: 20_000 })).stdout || '{}');
      const restoredPid = Number(st.pid);
      if (!(restoredPid > 1)) throw new Error(`runc restore: the destination's runc does not know ${c.id}`);
      hooks.onRunning(restoredPid);
      return stopCopyFigures({ start: t0, frozen: frozenAt, free: tFree }, { pid: restoredPid, runningAt }, copied,
        { source: dump.cpuS, destination: psr.cpuS + rs.cpuS });
    } finally {
      ps.kill();
    }
  }

  async close(): Promise<void> {}
}
