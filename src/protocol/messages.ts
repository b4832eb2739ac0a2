// Every message of the control connection, as one discriminated union on `t`,
// and the one validator that turns a peer's decoded frame into one of them.
//
// The validator runs at the frame boundary (FrameConn), so code that receives
// a message gets a typed value whose fields have the right types and lie in
// range: nothing from the network reaches an agent unchecked. Unknown types
// are refused; unknown fields are dropped (a newer peer may send more). What
// needs local state to judge (is this mode offered here, does this layout fit
// the store's budget) is checked where that state lives.
//
// Direction: S = source (`migrate`), D = destination (`serve`). The order in
// which they are exchanged is docs/PROTOCOL.md's; which ones each side accepts
// in which state is in src/agent/source-session.ts and destination-session.ts.
import { ExitCode, type ErrorCode, PhaulError } from '../errors';
import type { CriuFlags } from '../criu/cli-flags';

/** Largest piece of an image in one message (the source sends 16 MiB; the framing caps frames too). */
const MAX_IMAGE_CHUNK = 64 * 1024 * 1024;
/** Nonces, key-exchange values and MACs of the authentication. */
const MAX_AUTH_BYTES = 64;

/** What each side tells the other at handshake (src/agent/capabilities.ts decides with it). */
export interface Capabilities {
  phaulVersion: string;
  criu: { major: number; minor: number; sublevel: number };
  kernel: string;
  arch: string;
  /** The migrate modes this host can run, in no particular order. */
  modes: string[];
}

/** CRIU options the source asks the destination to restore with (the dump used the same). */
export type { CriuFlags };
export const CRIU_FLAGS = ['tcpEstablished', 'tcpClose', 'extUnixSk', 'shellJob', 'fileLocks', 'linkRemap'] as const;

/** A mapping the destination's page store is to hold (whole pages from vaddr). */
export interface LayoutRange {
  vaddr: number;
  nrPages: number;
}

/** What CRIU and our image writer accept as an image file name: no path, no dot files. */
export const IMAGE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

// ---- authentication (every connection; src/protocol/auth.ts) ----

/** S -> D, first on every connection: protocol version, role, session (empty for control), client nonce, key-exchange value. */
export interface Hello { t: 'hello'; proto: number; role: 'control' | 'data' | 'resolve'; session: string; nonce: Buffer; kx?: Buffer }
/** D -> S: server nonce, key-exchange value, and (where the protocol has the server prove first) its proof. */
export interface Challenge { t: 'challenge'; nonce: Buffer; kx?: Buffer; proof?: Buffer }
/** S -> D: the client's proof that it knows the token. */
export interface Auth { t: 'auth'; mac: Buffer }
/** D -> S: authenticated; the control connection's new session id, or the data connection's own; the server's proof. */
export interface Welcome { t: 'welcome'; session: string; proof?: Buffer }
/** Either way, at any point: the sender failed or refused; it closes next. `code` is one of src/errors.ts's. */
export interface ErrorMessage { t: 'error'; code: ErrorCode; message: string }

// ---- negotiation (control connection) ----

/** S -> D: the source's capabilities and the mode asked for (`auto` or a mode); D -> S: the destination's (no mode). */
export interface Caps { t: 'caps'; caps: Capabilities; mode?: string }
/** S -> D: the mode chosen and how to restore; pre-copy modes add their stream count and the tree's memory size. */
/** memBytes: the source's estimate of the pages it will send (admission, admission.ts);
 *  freezeTimeoutMs: its freeze budget, which bounds the destination's wait for `commit`. */
export interface Prepare {
  t: 'prepare'; mode: string; criu: CriuFlags; streams?: number; memBytes: number; freezeTimeoutMs?: number;
  /** A container migration: what src/container/target.ts checks in full (it needs the host's state to judge). */
  container?: object;
}
/** D -> S: ready for the data connection(s). */
export interface Prepared { t: 'prepared' }

// ---- pre-copy rounds (control connection; pages go over the data streams) ----

/** The mappings of one process in a `layout`. */
export interface ProcLayout { pid: number; ranges: LayoutRange[] }
/** S -> D: mappings the store has not seen yet (never announced twice), of every process
 *  whose pages the round is about to send: one message (and one round trip) per round.
 *  `gone`: processes that exited since the last layout: the store forgets them first. */
export interface Layout { t: 'layout'; procs: ProcLayout[]; gone?: number[] }
/** Most ranges one `layout` may hold, all processes together. */
export const LAYOUT_MAX_RANGES = 1 << 20;
/** D -> S: the layout is in the store; batches that need it may follow. */
export interface LayoutAck { t: 'layout-ack' }
/** S -> D: round `round` is over after `batches` batches on the streams; `final` with the tree frozen. */
export interface Round { t: 'round'; round: number; batches: number; final?: boolean }
/** D -> S: the store holds every batch of `round`. */
export interface RoundAck { t: 'round-ack'; round: number }

// ---- images and switchover ----

/** S -> D: one of CRIU's image files (pages excepted), or a further chunk of it (`append`). */
export interface Image { t: 'image'; name: string; data: Buffer; append?: boolean }
/** S -> D, pre-copy modes: every CRIU image is sent; the final round follows (hybrid starts its daemon now). */
export interface ImagesDone { t: 'images-done' }
/** S -> D, stop-copy: images and pages are all sent; restore now. */
export interface Restore { t: 'restore' }
/** S -> D, pre-copy modes: the final round is in; compose the images (namespace pid -> host pid of the dumped tree) and restore. */
export interface Switchover { t: 'switchover'; imageIds: Record<string, number> }
/** S -> D, postcopy: CRIU's images are all sent; restore lazily now. `pages`: how many lazy pages the images
 *  list (src/postcopy/layout.ts numbers them; the destination checks its count); imageIds as in `switchover`. */
export interface Postcopy { t: 'postcopy'; imageIds: Record<string, number>; pages: number }
/** D -> S, postcopy, from the restore to `filled`: a fault waits for lazy pages [page, page + pages): send them first. */
export interface PageRequest { t: 'page-request'; page: number; pages: number }
/** D -> S: the copy exists, stopped: it has not run. `pid` is its root on the destination. */
/** phases: what the destination's side of the switchover spent, ms by name (src/agent/phases.ts). */
export interface Restored { t: 'restored'; pid: number; restoreMs?: number; phases?: Stats; container?: ContainerName }

/** A moved container as the destination's runtime knows it. */
export interface ContainerName { id: string; runtime: string; bundle: string; /** the network namespace made for it */ netns?: string }

// ---- a container's bundle files, in rounds (src/container/tree-sync.ts checks each entry) ----

/** S -> D: entries of tree `tree` that changed (created, truncated to be filled by tree-data) and paths deleted. */
export interface TreeEntries { t: 'tree-entries'; tree: string; entries: unknown[]; deleted: unknown[] }
/** S -> D: the next bytes of file `p` of tree `tree`. */
export interface TreeData { t: 'tree-data'; tree: string; p: string; data: Buffer }

// ---- the two-phase commit ----

/** S -> D: the point of no return: resume the copy (the original stays stopped). */
export interface Commit { t: 'commit' }
/** D -> S: the copy runs; the source kills its original. */
export interface Running { t: 'running'; pid: number }
/** Counters by name, one level of nesting (the lazy-pages server's fill statistics). */
export type Stats = Record<string, number | Record<string, number>>;

/** D -> S, hybrid, after `running`: the lazy-pages server is done (`ok`: every page is in), `ms` after the
 *  restore began, and what it did (`fill`: pages, faults, fault latency; reported as the migration's `fill`). */
export interface Filled { t: 'filled'; ok: boolean; ms: number; fill?: Stats }
/** S -> D, before `commit`: the source gave up (and resumes its original); the destination discards everything. */
export interface Abort { t: 'abort'; message: string }

// ---- resolving a session whose source lost its control connection (role 'resolve') ----

/** S -> D: what became of the session this connection named in `hello`; `decide` settles a copy still
 *  stopped (`commit` resumes it, `abort` kills it); `query` changes nothing. */
export interface Resolve { t: 'resolve'; decide: 'query' | 'commit' | 'abort' }
/** What the destination knows of a session: its copy runs (`running`), waits stopped for a decision
 *  (`stopped`), was discarded and never ran (`aborted`), is still being received or restored
 *  (`in-progress`), or the destination has no record of it (`unknown`: no copy of it runs there);
 *  `unfilled`: the copy ran but its lazily filled memory never all arrived, so it is stopped for good
 *  (only `abort` settles it: the copy is killed, and the original, stopped at the source, is the workload). */
export type SessionOutcome = 'running' | 'stopped' | 'aborted' | 'in-progress' | 'unknown' | 'unfilled';
/** D -> S: the answer to `resolve`, after acting on its decision. */
export interface Resolution { t: 'resolution'; state: SessionOutcome; pid?: number; detail: string }

export type Message =
  | Hello | Challenge | Auth | Welcome | ErrorMessage
  | Caps | Prepare | Prepared
  | Layout | LayoutAck | Round | RoundAck
  | Image | ImagesDone | Restore | Switchover | Postcopy | PageRequest | Restored | TreeEntries | TreeData
  | Commit | Running | Filled | Abort
  | Resolve | Resolution;

export type MessageType = Message['t'];
export type MessageOf<T extends MessageType> = Extract<Message, { t: T }>;

/** Reads the fields of one raw message; every refusal names the message and the field. */
class Fields {
  constructor(private readonly raw: Record<string, unknown>, private readonly t: string) {}

  bad(k: string, why = ''): PhaulError {
    return new PhaulError('protocol', `message '${this.t}' has a bad '${k}'${why ? `: ${why}` : ''}`);
  }

  /** The raw value, for readers that check it themselves. */
  get(k: string): unknown {
    return this.raw[k];
  }

  has(k: string): boolean {
    return this.raw[k] !== undefined && this.raw[k] !== null;
  }

  str(k: string, max: number, re?: RegExp): string {
    const v = this.raw[k];
    if (typeof v !== 'string' || v.length > max || (re && !re.test(v))) throw this.bad(k);
    return v;
  }

  int(k: string, min: number, max: number): number {
    return checkInt(this.raw[k], min, max) ?? (() => { throw this.bad(k); })();
  }

  bool(k: string): boolean {
    const v = this.raw[k];
    if (typeof v !== 'boolean') throw this.bad(k);
    return v;
  }

  bin(k: string, max: number): Buffer {
    const v = this.raw[k];
    if (!(v instanceof Uint8Array) || v.length > max) throw this.bad(k);
    return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  }

  /** `{ [k]: bytes }` when the field is there, `{}` when it is not. */
  optionalBin<K extends string>(k: K, max: number): { [P in K]?: Buffer } {
    return (this.has(k) ? { [k]: this.bin(k, max) } : {}) as { [P in K]?: Buffer };
  }

  obj(k: string): Record<string, unknown> {
    const v = this.raw[k];
    if (!isRecord(v)) throw this.bad(k);
    return v;
  }

  /** Finite numbers by name, at most one level nested, at most 64 names a level. */
  stats(k: string): Stats {
    const level = (v: unknown, depth: number): Stats | undefined => {
      if (!isRecord(v)) return undefined;
      const entries = Object.entries(v);
      if (entries.length > 64) return undefined;
      const out: Stats = {};
      for (const [name, x] of entries) {
        if (name.length > 64) return undefined;
        if (typeof x === 'number' && Number.isFinite(x)) out[name] = x;
        else if (depth === 0 && isRecord(x)) {
          const inner = level(x, 1);
          if (!inner) return undefined;
          out[name] = inner as Record<string, number>;
        } else return undefined;
      }
      return out;
    };
    return level(this.raw[k], 0) ?? (() => { throw this.bad(k); })();
  }

  /** A text for humans: bounded, one line. */
  text(k: string): string {
    const v = this.raw[k];
    return typeof v === 'string' ? v.slice(0, 1000).replace(/\s+/g, ' ') : 'unspecified error';
  }
}

/** `imageIds` of `switchover` and `postcopy`: namespace pid -> host pid of the dumped tree. */
function imageIdsOf(f: Fields): Record<string, number> {
  const ids = f.has('imageIds') ? f.obj('imageIds') : {};
  const entries = Object.entries(ids);
  if (entries.length > PID_MAX) throw f.bad('imageIds');
  const imageIds: Record<string, number> = {};
  for (const [k, v] of entries) {
    if (!/^\d{1,7}$/.test(k) || checkInt(v, 1, PID_MAX) === undefined) throw f.bad('imageIds');
    imageIds[k] = v as number;
  }
  return imageIds;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

function checkInt(v: unknown, min: number, max: number): number | undefined {
  return typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max ? v : undefined;
}

const PID_MAX = 1 << 22;

/** A peer's capabilities, or undefined when they are malformed. */
export function checkCapabilities(c: unknown): Capabilities | undefined {
  if (!isRecord(c) || !isRecord(c.criu)) return undefined;
  const v = c.criu;
  const version = [v.major, v.minor, v.sublevel].map((n) => checkInt(n, 0, 999));
  const modes = c.modes;
  const ok = typeof c.phaulVersion === 'string' && c.phaulVersion.length <= 64 &&
    typeof c.kernel === 'string' && c.kernel.length <= 256 &&
    typeof c.arch === 'string' && c.arch.length <= 32 &&
    Array.isArray(modes) && modes.length < 16 && modes.every((x) => typeof x === 'string' && x.length <= 32) &&
    version.every((n) => n !== undefined);
  if (!ok) return undefined;
  return {
    phaulVersion: c.phaulVersion as string, kernel: c.kernel as string, arch: c.arch as string, modes: [...modes as string[]],
    criu: { major: version[0]!, minor: version[1]!, sublevel: version[2]! },
  };
}

/** One reader per message type: the wire format of each, in one place. */
const READERS: { [T in MessageType]: (f: Fields) => Omit<MessageOf<T>, 't'> } = {
  hello: (f) => ({
    proto: f.int('proto', 0, 1 << 30),
    role: f.str('role', 16, /^(control|data|resolve)$/) as 'control' | 'data' | 'resolve',
    session: f.str('session', 128),
    nonce: f.bin('nonce', MAX_AUTH_BYTES),
    ...f.optionalBin('kx', MAX_AUTH_BYTES),
  }),
  challenge: (f) => ({ nonce: f.bin('nonce', MAX_AUTH_BYTES), ...f.optionalBin('kx', MAX_AUTH_BYTES), ...f.optionalBin('proof', MAX_AUTH_BYTES) }),
  auth: (f) => ({ mac: f.bin('mac', MAX_AUTH_BYTES) }),
  welcome: (f) => ({ session: f.str('session', 128), ...f.optionalBin('proof', MAX_AUTH_BYTES) }),
  error: (f) => {
    // A code we do not know must not turn into an undefined exit code.
    const c = f.get('code');
    const code = typeof c === 'string' && Object.hasOwn(ExitCode, c) ? (c as ErrorCode) : 'failed';
    return { code, message: f.text('message') };
  },
  caps: (f) => {
    const caps = checkCapabilities(f.has('caps') ? f.obj('caps') : undefined);
    if (!caps) throw f.bad('caps', 'malformed capabilities');
    return f.has('mode') ? { caps, mode: f.str('mode', 32) } : { caps };
  },
  prepare: (f) => {
    const requested = f.has('criu') ? f.obj('criu') : {};
    const criu: CriuFlags = {};
    for (const k of CRIU_FLAGS) if (requested[k] === true) criu[k] = true;
    const m: Omit<Prepare, 't'> = { mode: f.str('mode', 32), criu, memBytes: f.int('memBytes', 0, 2 ** 50) };
    if (f.has('streams')) m.streams = f.int('streams', 1, 16);
    if (f.has('freezeTimeoutMs')) m.freezeTimeoutMs = f.int('freezeTimeoutMs', 1000, 3_600_000);
    if (f.has('container')) m.container = f.obj('container');
    return m;
  },
  prepared: () => ({}),
  layout: (f) => {
    const raw = f.get('procs');
    if (!Array.isArray(raw) || raw.length > 1 << 16) throw f.bad('procs');
    let total = 0;
    const procs: ProcLayout[] = raw.map((p) => {
      const pid = isRecord(p) ? checkInt(p.pid, 1, PID_MAX) : undefined;
      const list = isRecord(p) ? p.ranges : undefined;
      if (pid === undefined || !Array.isArray(list) || (total += list.length) > LAYOUT_MAX_RANGES) throw f.bad('procs');
      const ranges: LayoutRange[] = list.map((r) => {
        const vaddr = isRecord(r) ? checkInt(r.vaddr, 0, Number.MAX_SAFE_INTEGER) : undefined;
        const nrPages = isRecord(r) ? checkInt(r.nrPages, 1, 2 ** 40) : undefined;
        if (vaddr === undefined || nrPages === undefined) throw f.bad('procs');
        return { vaddr, nrPages };
      });
      return { pid, ranges };
    });
    if (!f.has('gone')) return { procs };
    const gone = f.get('gone');
    if (!Array.isArray(gone) || gone.length > 1 << 16 || gone.some((g) => checkInt(g, 1, PID_MAX) === undefined)) throw f.bad('gone');
    return { procs, gone: gone as number[] };
  },
  'layout-ack': () => ({}),
  round: (f) => ({ round: f.int('round', 0, 1 << 20), batches: f.int('batches', 0, 1 << 30), final: f.has('final') ? f.bool('final') : false }),
  'round-ack': (f) => ({ round: f.int('round', 0, 1 << 20) }),
  image: (f) => {
    const name = f.get('name');
    if (typeof name !== 'string' || !IMAGE_NAME.test(name)) {
      throw new PhaulError('protocol', `bad image name '${String(name).slice(0, 40)}'`);
    }
    return { name, data: f.bin('data', MAX_IMAGE_CHUNK), append: f.has('append') ? f.bool('append') : false };
  },
  'images-done': () => ({}),
  restore: () => ({}),
  switchover: (f) => ({ imageIds: imageIdsOf(f) }),
  postcopy: (f) => ({ imageIds: imageIdsOf(f), pages: f.int('pages', 0, 2 ** 40) }),
  'page-request': (f) => ({ page: f.int('page', 0, 2 ** 40), pages: f.int('pages', 1, 1 << 20) }),
  restored: (f) => {
    const m: Omit<Restored, 't'> = { pid: f.int('pid', 1, PID_MAX) };
    if (f.has('restoreMs')) m.restoreMs = f.int('restoreMs', 0, 2 ** 40);
    if (f.has('phases')) m.phases = f.stats('phases');
    if (f.has('container')) {
      const c = new Fields(f.obj('container'), 'restored.container');
      m.container = { id: c.str('id', 128), runtime: c.str('runtime', 32), bundle: c.str('bundle', 4096) };
      if (c.has('netns')) m.container.netns = c.str('netns', 4096);
    }
    return m;
  },
  'tree-entries': (f) => {
    const entries = f.get('entries');
    const deleted = f.get('deleted');
    if (!Array.isArray(entries) || entries.length > 2000) throw f.bad('entries');
    if (!Array.isArray(deleted) || deleted.length > 2000) throw f.bad('deleted');
    return { tree: f.str('tree', 32), entries, deleted };
  },
  'tree-data': (f) => ({ tree: f.str('tree', 32), p: f.str('p', 4096), data: f.bin('data', 8 << 20) }),
  commit: () => ({}),
  running: (f) => ({ pid: f.int('pid', 1, PID_MAX) }),
  filled: (f) => ({ ok: f.bool('ok'), ms: f.int('ms', 0, 2 ** 40), ...(f.has('fill') ? { fill: f.stats('fill') } : {}) }),
  abort: (f) => ({ message: f.text('message') }),
  resolve: (f) => ({ decide: f.str('decide', 8, /^(query|commit|abort)$/) as Resolve['decide'] }),
  resolution: (f) => ({
    state: f.str('state', 16, /^(running|stopped|aborted|in-progress|unknown|unfilled)$/) as SessionOutcome,
    ...(f.has('pid') ? { pid: f.int('pid', 1, PID_MAX) } : {}),
    detail: f.text('detail'),
  }),
};

/**
 * The one validator: a decoded frame body from a peer becomes a typed Message,
 * or a PhaulError('protocol') that says which message and field was wrong.
 */
export function parseMessage(raw: unknown): Message {
  if (!isRecord(raw) || typeof raw.t !== 'string') throw new PhaulError('protocol', 'malformed message');
  const t = raw.t;
  if (!Object.hasOwn(READERS, t)) throw new PhaulError('protocol', `unknown message type '${t.slice(0, 40)}'`);
  const read = READERS[t as MessageType] as (f: Fields) => object;
  return { t, ...read(new Fields(raw, t)) } as Message;
}
