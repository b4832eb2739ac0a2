// memcached from Debian's packages as a benchmark workload (served-app.ts says
// how it is loaded, kept busy and measured): memMiB of items, set by its
// client at writeMBps until the switchover, every item checked on the destination.
import * as path from 'node:path';
import type { WorkloadSpec } from '../matrix';
import { findProgram, startServedApp } from './served-app';
import type { BenchWorkload, WorkloadEnv } from './types';

const PORT = 11211;
const VALUE_SIZE = 4000;

export async function startMemcached(spec: WorkloadSpec, env: WorkloadEnv): Promise<BenchWorkload> {
  const bin = await findProgram('memcached');
  const items = Math.floor((spec.memMiB * 2 ** 20) / VALUE_SIZE);
  const cacheMiB = Math.ceil(spec.memMiB * 1.6) + 64; // slab overhead: nothing may be evicted
  return startServedApp({
    argv: [bin, '-u', 'root', '-l', '0.0.0.0', '-p', String(PORT), '-m', String(cacheMiB), '-t', '2', '-c', '256'],
    comm: 'memcached',
    port: PORT,
    agent: [process.execPath, path.join(__dirname, 'mc-agent.js')],
    dataArgs: [String(items), String(VALUE_SIZE)],
    writeMBps: spec.writeMBps,
    judge: (r, client) => {
      const ok = r.bad === 0 && r.missing === 0 && client.bad === 0;
      return {
        ok,
        detail: ok ? `${items} items verified, client did ${client.ops} ops before the switchover`
          : `${r.bad} wrong, ${r.missing} missing of ${items} items (first ${r.firstBad}); client saw ${client.bad} bad values`,
      };
    },
  }, env);
}
