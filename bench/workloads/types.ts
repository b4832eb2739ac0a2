// A benchmark workload: started on the source host, told when the migration
// starts, checked on the destination afterwards.
import type { TwoHosts, Host } from '../../src/testing/hosts';
import type { WorkloadSpec } from '../matrix';
import type { BenchContainer } from './container';

export interface Verdict {
  ok: boolean;
  /** The longest pause the workload (or its client) saw. */
  pauseMs: number | null;
  /** When that longest pause ended (epoch ms), when the workload says (memwork). */
  pauseEndMs?: number;
  detail: string;
}

export interface BenchWorkload {
  /** The process to migrate, as the source host sees it. */
  readonly pid: number;
  /** A container workload: the container the strategies move. */
  readonly container?: BenchContainer;
  /** Its clients stay connected through the migration: their connections are dumped closed (PeerContext.tcpClose). */
  readonly tcpClose?: boolean;
  /** Right before the migration: reset the pause measurement / end the client's session. */
  beforeMigration(): Promise<void>;
  /** As soon as the workload runs at the destination. */
  onRunning(restoredPid: number): void;
  /** After the migration has completed: is every byte there, and what pause was seen? */
  verify(restoredPid: number): Promise<Verdict>;
  /** Ends the original, the restored copy and every helper, by pid. */
  stop(restoredPid?: number): Promise<void>;
}

export interface WorkloadEnv {
  link: TwoHosts;
  src: Host;
  dst: Host;
  /** A directory for reports and helpers of this run (not tmpfs-critical). */
  dir: string;
}

export type StartWorkload = (spec: WorkloadSpec, env: WorkloadEnv) => Promise<BenchWorkload>;
