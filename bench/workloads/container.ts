// memwork as a container's init (bench --containers): a runc container built
// as test/migrate-container.test.ts builds it, or, for podman's own path, a
// podman container of an imported image holding the same binary. The pause
// is memwork's own longest stall, read from its report inside the container
// (/proc/PID/root/report.json works at both ends); every page is checked at
// the destination. Each host's runtime state lives in the cell's directory.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Podman } from '../../src/container/podman';
import { containerMemReport, makeBundle, removeCgroups, removeContainer, runContainer, waitMemReady } from '../../src/testing/container';
import { importImage, podmanHost, runPodmanContainer } from '../../src/testing/podman';
import { signal, sleep } from '../../src/testing/proc';
import type { StrategyName, WorkloadSpec } from '../matrix';
import type { BenchWorkload, Verdict, WorkloadEnv } from './types';

export type ContainerRuntime = 'runc' | 'podman';

export interface BenchContainer {
  id: string;
  runtime: ContainerRuntime;
  /** The cell's directory: every host's runtime state is under it (containerHosts). */
  cellDir: string;
}

/** The image podman's runs use: busybox and memwork, imported (no registry). */
export const BENCH_IMAGE = 'localhost/phaul-bench-memwork:1';

/** Where each host keeps its runtime state in a cell, and the cgroup parents of each host's runc containers. */
export function containerHosts(cellDir: string) {
  return {
    runcSrc: path.join(cellDir, 'runc-src'),
    runcDst: path.join(cellDir, 'runc-dst'),
    bundlesDst: path.join(cellDir, 'bundles-dst'),
    podmanSrc: path.join(cellDir, 'podman-src'),
    podmanDst: path.join(cellDir, 'podman-dst'),
    cgSrc: `phaul-bench-${process.pid}-src`,
    cgDst: `phaul-bench-${process.pid}-dst`,
  };
}

/** podman's own path needs a podman container; every other strategy moves a runc container. */
export function runtimeFor(strategy: StrategyName): ContainerRuntime {
  return strategy.startsWith('podman:') ? 'podman' : 'runc';
}

let counter = 0;

export async function startContainerMemwork(spec: WorkloadSpec, env: WorkloadEnv, runtime: ContainerRuntime): Promise<BenchWorkload & { container: BenchContainer }> {
  const cellDir = path.dirname(env.dir);
  const h = containerHosts(cellDir);
  const id = `pfb-${process.pid}-${++counter}`;
  const args = ['/bin/memwork', '--mib', String(spec.memMiB), '--report', '/report.json', '--write-mbps', String(spec.writeMBps)];
  let pid: number;
  let podman: Podman | undefined;
  if (runtime === 'podman') {
    podman = podmanHost(h.podmanSrc);
    await importImage(podman, BENCH_IMAGE, ['memwork'], cellDir);
    pid = await runPodmanContainer(podman, { name: id, image: BENCH_IMAGE, args, extra: ['--cgroup-parent', `/${h.cgSrc}`] });
  } else {
    const bundle = await makeBundle({ dir: path.join(env.dir, 'bundle-src'), cgroupsPath: `/${h.cgSrc}/${id}`, workloads: ['memwork'], args });
    pid = await runContainer(h.runcSrc, bundle, id, env.src.netnsPath);
  }
  const stop = async () => {
    if (podman) {
      await podman.destroy(id);
      if (fs.existsSync(h.podmanDst)) await podmanHost(h.podmanDst).destroy(id);
      removeCgroups(h.cgSrc);
      return;
    }
    await removeContainer(h.runcSrc, id);
    await removeContainer(h.runcDst, id);
    fs.rmSync(path.join(h.bundlesDst, id), { recursive: true, force: true });
    removeCgroups(h.cgSrc);
    removeCgroups(h.cgDst);
  };
  try {
    await waitMemReady(pid, `/proc/${pid}/root/report.json`, 30_000 + spec.memMiB * 20);
  } catch (e) {
    await stop();
    throw e;
  }
  return {
    pid,
    container: { id, runtime, cellDir },
    async beforeMigration() {
      signal(pid, 'SIGUSR2'); // memwork restarts its longest-stall measure
      await sleep(5);
    },
    onRunning: () => {},
    async verify(restoredPid: number): Promise<Verdict> {
      const r = await containerMemReport(restoredPid, `/proc/${restoredPid}/root/report.json`, 15_000 + spec.memMiB * 5);
      return {
        ok: r.ok && r.badPages === 0,
        pauseMs: r.maxGapMs,
        detail: r.ok ? `${r.pages} pages verified` : `${r.badPages} of ${r.pages} pages wrong, first ${r.firstBad}`,
      };
    },
    stop,
  };
}
