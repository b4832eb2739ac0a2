// A minimal memcached text-protocol client: just what the benchmark needs to
// load items, keep a client busy, and check every item after a migration.
import { LineConn } from './line-client';

export class McClient {
  private constructor(private readonly conn: LineConn) {}

  static async connect(host: string, port: number, timeoutMs = 2_000): Promise<McClient> {
    return new McClient(await LineConn.connect(host, port, timeoutMs));
  }

  /** Pipelined sets without replies, then one `version` as a barrier. */
  async setMany(items: Array<[string, Buffer]>): Promise<void> {
    const parts: Buffer[] = [];
    for (const [k, v] of items) parts.push(Buffer.from(`set ${k} 0 0 ${v.length} noreply\r\n`), v, Buffer.from('\r\n'));
    parts.push(Buffer.from('version\r\n'));
    await this.conn.write(Buffer.concat(parts));
    const l = await this.conn.line();
    if (!l.startsWith('VERSION')) throw new Error(`memcached: ${l}`);
  }

  /** Multi-get: values by key (missing keys absent). */
  async getMany(keys: string[]): Promise<Map<string, Buffer>> {
    await this.conn.write(`get ${keys.join(' ')}\r\n`);
    const out = new Map<string, Buffer>();
    for (;;) {
      const l = await this.conn.line();
      if (l === 'END') return out;
      const m = /^VALUE (\S+) \d+ (\d+)$/.exec(l);
      if (!m) throw new Error(`memcached: unexpected '${l.slice(0, 80)}'`);
      out.set(m[1], await this.conn.block(Number(m[2])));
    }
  }

  close(): void {
    this.conn.close();
  }
}
