// podman:export — podman's own way to move a container, as docs/BENCH.md "The matrix" describes it:
//   S: podman container checkpoint --export F --compress none ID
//   copy F;  D: podman container restore --import F
// Each host is a podman state directory of its own in the cell's directory;
// both have the image already, with one id (imported at the source, copied
// with podman save and load when the cell starts), so only the checkpoint moves. --compress none: on tmpfs compression only costs time.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { findPodman } from '../../src/container/podman';
import { removeCgroups } from '../../src/testing/container';
import { inHost } from '../../src/testing/hosts';
import { importImage, podmanHost, removePodmanHost, shareImage } from '../../src/testing/podman';
import { runCmd } from '../../src/testing/proc';
import { BENCH_IMAGE, containerHosts } from '../workloads/container';
import { stopCopyFigures, watchFreeze } from './common';
import { type Peer, type PeerContext, type RunFigures, type RunHooks, Unavailable } from './types';

export class PodmanExport implements Peer {
  readonly name = 'podman:export';
  private cellDir = '';

  async open(ctx: PeerContext): Promise<void> {
    if (!findPodman()) throw new Unavailable('podman is not installed');
    this.cellDir = ctx.runDir;
    const h = containerHosts(ctx.runDir);
    const src = podmanHost(h.podmanSrc);
    await importImage(src, BENCH_IMAGE, ['memwork'], ctx.runDir);
    await shareImage(src, podmanHost(h.podmanDst), BENCH_IMAGE, ctx.runDir);
  }

  async migrate(pid: number, ctx: PeerContext, hooks: RunHooks): Promise<RunFigures> {
    const c = ctx.container;
    if (!c) throw new Error('podman:export moves containers only');
    const h = containerHosts(c.cellDir);
    const src = podmanHost(h.podmanSrc);
    const dst = podmanHost(h.podmanDst);
    fs.mkdirSync(ctx.runDir, { recursive: true });
    const srcFile = path.join(ctx.runDir, 'checkpoint-src.tar');
    const dstFile = path.join(ctx.runDir, 'checkpoint-dst.tar');
    const big = 60_000 + ctx.memMiB * 100;
    const t0 = performance.now();
    const freeze = watchFreeze(pid);
    const dump = await runCmd(inHost(ctx.src, src.argv(['container', 'checkpoint', '--export', srcFile, '--compress', 'none', c.id])),
      { timeoutMs: big, env: src.env }).finally(() => freeze.stop());
    const frozenAt = freeze.stop() ?? t0;
    if (dump.code !== 0) throw new Error(`podman container checkpoint: ${dump.stderr.trim().split('\n').pop()}`);
    fs.copyFileSync(srcFile, dstFile);
    const copied = fs.statSync(dstFile).size;
    const tFree = performance.now();
    const rs = await runCmd(inHost(ctx.dst, dst.argv(['container', 'restore', '--import', dstFile])), { timeoutMs: big, env: dst.env });
    const runningAt = performance.now();
    if (rs.code !== 0) throw new Error(`podman container restore: ${rs.stderr.trim().split('\n').pop()}`);
    const restored = await dst.inspect(c.id);
    if (!restored || restored.pid <= 1) throw new Error(`podman container restore: the destination's podman does not run ${c.id}`);
    hooks.onRunning(restored.pid);
    return stopCopyFigures({ start: t0, frozen: frozenAt, free: tFree }, { pid: restored.pid, runningAt }, copied, { source: dump.cpuS, destination: rs.cpuS });
  }

  async close(): Promise<void> {
    if (!this.cellDir) return;
    const h = containerHosts(this.cellDir);
    for (const d of [h.podmanSrc, h.podmanDst]) await removePodmanHost(podmanHost(d));
    // conmon's cgroups under the workloads' parent outlive `podman rm` for a moment: gone by now.
    removeCgroups(h.cgSrc);
  }
}
