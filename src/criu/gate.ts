// A gate that holds a CRIU command-line run at one of its actions until we
// open it (scripts/criu-gate.sh is CRIU's --action-script). Used to start CRIU's lazy dump
// before the pause and let it go on at the switchover: at pre-dump it has
// frozen nothing yet. (A restore cannot be held that way: CRIU reads the
// images before its pre-restore action. Its start-up leaves the pause
// through rpc.ts startCriu and a kernel-probe cache, kerndat-cache.ts.)
//
//   const gate = new CriuGate(dir, 'pre-dump');
//   spawn(criu, [...args, ...gate.args], { env: gate.env(process.env) });
//   gate.open();     // CRIU goes on
//   gate.close();    // (instead of open) CRIU fails the action and stops
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PhaulError } from '../errors';
import { PACKAGE_ROOT } from '../package-root';

const GATE_SCRIPT = path.join(PACKAGE_ROOT, 'scripts', 'criu-gate.sh');

export class CriuGate {
  private readonly fifo: string;
  /** Our end, open read-write so that neither our open nor the script's blocks; closing it says no. */
  private fd: number;
  openedAt = 0;

  /** Creates the FIFO in `dir` (CRIU's images directory: the agent's own). */
  constructor(dir: string, readonly action: 'pre-dump') {
    this.fifo = path.join(dir, `${action}.gate`);
    execFileSync('mkfifo', ['-m', '600', this.fifo]);
    this.fd = fs.openSync(this.fifo, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
  }

  /** CRIU arguments that install the gate. */
  get args(): string[] {
    return ['--action-script', GATE_SCRIPT];
  }

  /** CRIU's environment: `base` and where the gate is. */
  env(base: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
    return { ...base, PHAUL_FAST_GATE: this.fifo, PHAUL_FAST_GATE_ACTION: this.action };
  }

  /** Lets CRIU go on (now, or as soon as it reaches the action). */
  open(): void {
    if (this.fd < 0) throw new PhaulError('criu', `criu's ${this.action} gate is already closed`);
    this.openedAt = Date.now();
    fs.writeSync(this.fd, 'go\n');
  }

  /** Ends our side: a CRIU still waiting reads end of file and stops. Idempotent. */
  close(): void {
    if (this.fd >= 0) {
      fs.closeSync(this.fd);
      this.fd = -1;
    }
    fs.rmSync(this.fifo, { force: true });
  }
}
