// redis-server from Debian's packages as a benchmark workload (served-app.ts
// says how it is loaded, kept busy and measured): 2^20 keys per 128 MiB of
// memMiB (Redis's own DEBUG POPULATE, values of 64 bytes), rewritten by its
// client at writeMBps until the switchover; after the migration the key count
// and every value are checked on the destination. No persistence: the data
// set lives only in the process's memory, which is what is moved.
import * as path from 'node:path';
import type { WorkloadSpec } from '../matrix';
import { findProgram, startServedApp } from './served-app';
import type { BenchWorkload, WorkloadEnv } from './types';

const PORT = 6379;
const VALUE_SIZE = 64;
/** Keys per MiB of memMiB: 128 MiB holds 2^20 keys (Redis's own size for them is ~110 MiB). */
const KEYS_PER_MIB = 8192;

export async function startRedis(spec: WorkloadSpec, env: WorkloadEnv): Promise<BenchWorkload> {
  const bin = await findProgram('redis-server');
  const keys = spec.memMiB * KEYS_PER_MIB;
  return startServedApp({
    argv: [bin, '--port', String(PORT), '--bind', '0.0.0.0', '--protected-mode', 'no', '--save', '', '--appendonly', 'no',
      '--daemonize', 'no', '--logfile', '', '--enable-debug-command', 'yes'],
    comm: 'redis-server',
    port: PORT,
    agent: [process.execPath, path.join(__dirname, 'redis-agent.js')],
    dataArgs: [String(keys), String(VALUE_SIZE)],
    writeMBps: spec.writeMBps,
    judge: (r, client) => {
      const ok = r.dbsize === keys && r.bad === 0 && r.missing === 0 && client.bad === 0;
      return {
        ok,
        detail: ok ? `${keys} keys verified, client did ${client.ops} ops before the switchover`
          : `${r.dbsize} keys of ${keys}: ${r.bad} wrong, ${r.missing} missing (first ${r.firstBad}); client saw ${client.bad} bad values`,
      };
    },
  }, env);
}
