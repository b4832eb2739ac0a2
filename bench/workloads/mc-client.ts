// A minimal memcached text-protocol client: just what the benchmark needs to
// load items, keep a client busy, and check every item after a migration.
import * as net from 'node:net';

export class McClient {
  private buf: Buffer = Buffer.alloc(0);
  private waiters: Array<() => void> = [];
  private closed: Error | null = null;

  private constructor(private readonly sock: net.Socket) {
    sock.on('data', (d) => { this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d; this.wake(); });
    sock.on('error', (e) => { this.closed = e; this.wake(); });
    sock.on('close', () => { this.closed ??= new Error('connection closed'); this.wake(); });
  }

  static connect(host: string, port: number, timeoutMs = 2_000): Promise<McClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ host, port });
      const t = setTimeout(() => { s.destroy(); reject(new Error(`connect ${host}:${port} timed out`)); }, timeoutMs);
      s.once('connect', () => { clearTimeout(t); s.setNoDelay(true); resolve(new McClient(s)); });
      s.once('error', (e) => { clearTimeout(t); reject(e); });
    });
  }

  private wake() {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  private async need(pred: () => number): Promise<number> {
    for (;;) {
      const n = pred();
      if (n >= 0) return n;
      if (this.closed) throw this.closed;
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }

  private async line(): Promise<string> {
    const i = await this.need(() => this.buf.indexOf('\r\n'));
    const l = this.buf.subarray(0, i).toString('latin1');
    this.buf = this.buf.subarray(i + 2);
    return l;
  }

  /** Pipelined sets without replies, then one `version` as a barrier. */
  async setMany(items: Array<[string, Buffer]>): Promise<void> {
    const parts: Buffer[] = [];
    for (const [k, v] of items) parts.push(Buffer.from(`set ${k} 0 0 ${v.length} noreply\r\n`), v, Buffer.from('\r\n'));
    parts.push(Buffer.from('version\r\n'));
    if (!this.sock.write(Buffer.concat(parts))) await new Promise((r) => this.sock.once('drain', r));
    const l = await this.line();
    if (!l.startsWith('VERSION')) throw new Error(`memcached: ${l}`);
  }

  /** Multi-get: values by key (missing keys absent). */
  async getMany(keys: string[]): Promise<Map<string, Buffer>> {
    this.sock.write(`get ${keys.join(' ')}\r\n`);
    const out = new Map<string, Buffer>();
    for (;;) {
      const l = await this.line();
      if (l === 'END') return out;
      const m = /^VALUE (\S+) \d+ (\d+)$/.exec(l);
      if (!m) throw new Error(`memcached: unexpected '${l.slice(0, 80)}'`);
      const len = Number(m[2]);
      await this.need(() => (this.buf.length >= len + 2 ? 0 : -1));
      out.set(m[1], Buffer.from(this.buf.subarray(0, len)));
      this.buf = this.buf.subarray(len + 2);
    }
  }

  close(): void {
    this.sock.destroy();
  }
}
