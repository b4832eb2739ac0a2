// Holds a CRIU command-line run at its start until we let it go, with its log
// file as the gate. CRIU opens its log (-o) right after reading its options
// and images directory, before it probes the kernel or touches any process
// (criu/crtools.c: log_init comes before kerndat_init and the dump). With the
// log file a FIFO, that open blocks until we open the other end: so CRIU can
// be started ahead (its process start-up is then no part of the switchover)
// and goes on when we open the FIFO, reading its log from then on.
//
// Why not an --action-script that waits at pre-dump (what this was before):
// CRIU runs its action script at every action, and two of them (post-dump,
// status-ready) come while the tree is frozen, each a fork and exec that CRIU
// waits for: freeze to images at 256 MiB took 216 ms instead of 146 (medians
// of 4 alternating pairs, /bin/true as the script, host load ~8; a few ms
// on a quiet host).
//
//   const gate = new CriuLogGate(dir);
//   spawn(criu, [...args, '-o', gate.name]);   // CRIU waits in open()
//   gate.open();      // CRIU goes on; gate.text() is its log so far
//   gate.close();     // once CRIU has exited: the log becomes a plain file
// A CRIU that must not go on is ended with a signal while it waits: it has
// installed no handler yet and has touched nothing.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { PhaulError } from '../errors';
import { addon } from '../native';

/** The log kept in memory: CRIU's default level writes a few KiB; -v4 much more. */
const MAX_LOG = 1 << 20;

export class CriuLogGate {
  private readonly fifo: string;
  private reader?: net.Socket;
  private log = '';
  /** Resolves when CRIU has closed its end (it exited) and its last lines are read. */
  private readEnd?: Promise<void>;
  openedAt = 0;

  /** Creates the FIFO `name` in `dir` (CRIU's images directory, where it opens its log). */
  constructor(dir: string, readonly name = 'dump.log') {
    this.fifo = path.join(dir, name);
    addon().makeFifo(this.fifo, 0o600);
  }

  /** Lets CRIU go on (now, or as soon as it reaches its log's open). */
  open(): void {
    if (this.reader) throw new PhaulError('criu', `criu's log gate ${this.fifo} is already open`);
    this.openedAt = Date.now();
    // Non-blocking: CRIU is the writer; a CRIU not there yet finds a reader when it comes.
    const fd = fs.openSync(this.fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    this.reader = new net.Socket({ fd, readable: true, writable: false });
    this.reader.on('data', (d: Buffer) => {
      this.log += d.toString('utf8');
      if (this.log.length > MAX_LOG) this.log = this.log.slice(-MAX_LOG / 2);
    });
    this.reader.on('error', () => undefined);
    const r = this.reader;
    this.readEnd = new Promise((resolve) => r.once('close', () => resolve()));
  }

  /** CRIU's log so far (empty before open()). */
  text(): string {
    return this.log;
  }

  /**
   * After CRIU has exited (earlier, CRIU's log writes would fail: it ignores
   * SIGPIPE, so nothing worse): reads its last lines (up to 1 s), stops
   * reading and leaves the log as a plain file where the FIFO was (kept
   * images keep their log). Idempotent.
   */
  async close(): Promise<void> {
    if (this.readEnd) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.readEnd, new Promise((r) => { timer = setTimeout(r, 1000); })]);
      clearTimeout(timer);
    }
    this.reader?.destroy();
    this.reader = undefined;
    try {
      if (fs.lstatSync(this.fifo).isFIFO()) {
        fs.rmSync(this.fifo, { force: true });
        fs.writeFileSync(this.fifo, this.log, { mode: 0o600 });
      }
    } catch { /* the directory is gone */ }
  }
}
