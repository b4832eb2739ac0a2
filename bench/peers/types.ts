// What every migration strategy of the benchmark provides. One file per peer.
import type { Host, TwoHosts } from '../../src/testing/hosts';
import type { WorkloadSpec } from '../matrix';
import type { BenchContainer } from '../workloads/container';

export interface PeerContext {
  link: TwoHosts;
  /** Where the workload runs and the source agent goes. */
  src: Host;
  /** Where the workload must end up. */
  dst: Host;
  /** A fresh directory on tmpfs for this run (removed by the runner). */
  runDir: string;
  /** A port no earlier run of this cell used (avoids TIME_WAIT clashes). */
  port: number;
  criu: string;
  memMiB: number;
  /** What the cell moves: a container's strategies need its id and its hosts' runtime state. */
  workloadKind: WorkloadSpec['kind'];
  /** The run's container (set once the workload has started; container workloads only). */
  container?: BenchContainer;
  /**
   * The workload serves TCP clients that stay connected through the
   * migration: every strategy dumps and restores their connections closed
   * (CRIU's --tcp-close, phaul-fast's migrate --tcp-close); the clients reconnect.
   */
  tcpClose?: boolean;
  log(msg: string): void;
}

export interface RunHooks {
  /** Called as soon as the workload runs on the destination (before any post-copy ends). */
  onRunning(restoredPid: number): void;
}

export interface RunFigures {
  /** The restored root as the destination host sees it. */
  restoredPid: number;
  /** The engine's own downtime: frozen at the source until running at the destination. */
  downtimeMs: number;
  /** Start of the migration until the destination has everything. */
  totalMs: number;
  /** Start until the source is no longer needed (for post-copy: the last page sent). */
  sourceFreeMs: number;
  /** Bytes the strategy moved outside the link (CRIU images copied as files), added to the link's count. */
  offLinkBytes: number;
  /** Bytes the engine says it sent, when it says. */
  engineBytes?: number;
  rounds: number;
  /** user+sys CPU seconds of the agents and every CRIU they ran, at both ends (not of the workload). */
  cpuS: number;
  /** The source's share of cpuS (its agent or CRIU dump, with their children); the rest is the destination's. */
  cpuSourceS: number;
  /**
   * The first pass over memory, MB/s (10^6 bytes): pre-copy's first round
   * (its bytes over its time), CRIU's page-server dump (pages over the dump's
   * wall time). Absent for strategies without one.
   */
  copyMBps?: number;
  /** The engine's phases in ms, in order, when it reports them (phaul-fast: migrate --json phases). */
  phases?: Record<string, number>;
  /** CPU of CRIU's dump inside the pause, CRIU and its parasite (phaul-fast pre-copy modes: criuDumpCpu). */
  criuDumpCpuMs?: number;
  /** A fill after resume (hybrid): what the destination's lazy-pages server reported. */
  fill?: FillFigures;
  /** When the engine says the workload froze and ran again (epoch ms; phaul-fast pre-copy modes). */
  frozenAt?: number;
  runningAt?: number;
  /** phaul-fast pre-copy modes: the frozen round (migrate --json frozenRound). */
  frozenRound?: Record<string, number>;
}

export interface FillFigures {
  /** The restore's end until every page was in place (the server's own clock). */
  fillMs: number;
  /** Pages placed (faults and background). */
  pages: number;
  /** A fault's message to its page in place, microseconds. */
  faultP50Us: number;
  faultP99Us: number;
  faultMaxUs: number;
}

export interface Peer {
  readonly name: string;
  /** Once per cell: start long-lived agents. Throws Unavailable when the strategy cannot run here. */
  open(ctx: PeerContext): Promise<void>;
  migrate(pid: number, ctx: PeerContext, hooks: RunHooks): Promise<RunFigures>;
  close(): Promise<void>;
}

/** The strategy does not exist here (a mode the CLI rejects): reported, never counted as a failure. */
export class Unavailable extends Error {}
