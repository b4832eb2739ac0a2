// The two test hosts of the container tests: each with its own runc --root,
// bundle directory and cgroup parent, and a destination agent serving moved
// containers into host b's. Registers the before/after hooks of the file that
// calls it; the fields are filled in by `before`.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before } from 'node:test';
import { createTwoHosts, TwoHosts } from '../../src/testing/hosts';
import { removeCgroups, runcAvailable } from '../../src/testing/container';
import { ServeAgent, startServe, tempDir, writeToken } from './agents';

export const containerSkip: string | false = process.getuid?.() !== 0 ? 'needs root (runc, CRIU, network namespaces)' : runcAvailable() ?? false;

export interface ContainerHosts {
  hosts: TwoHosts;
  dir: string;
  token: string;
  serve: ServeAgent;
  /** Unique to this run: names containers and cgroups. */
  tag: string;
  cgA: string;
  cgB: string;
  rootA: string;
  rootB: string;
  bundlesB: string;
}

export function useContainerHosts(prefix: string): ContainerHosts {
  const tag = crypto.randomBytes(3).toString('hex');
  const fx = { tag, cgA: `phaul-test-${tag}-a`, cgB: `phaul-test-${tag}-b` } as ContainerHosts;
  before(async () => {
    if (containerSkip) return;
    fx.hosts = await createTwoHosts({ prefix });
    fx.dir = tempDir(prefix);
    fx.token = writeToken(fx.dir);
    fx.rootA = path.join(fx.dir, 'runc-a');
    fx.rootB = path.join(fx.dir, 'runc-b');
    fx.bundlesB = path.join(fx.dir, 'bundles-b');
    fx.serve = await startServe(fx.hosts.b, fx.token, path.join(fx.dir, 'dest'),
      ['--runtime-root', fx.rootB, '--bundles', fx.bundlesB, '--cgroup-parent', fx.cgB]);
  });
  after(async () => {
    if (containerSkip) return;
    await fx.serve?.stop();
    await fx.hosts?.destroy();
    removeCgroups(fx.cgA);
    removeCgroups(fx.cgB);
    if (fx.dir) fs.rmSync(fx.dir, { recursive: true, force: true });
  });
  return fx;
}
