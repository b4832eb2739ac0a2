// Redis client helper, run inside a host's network namespace (like
// mc-agent.ts, which says why), speaking just enough RESP:
//   node redis-agent.js load  HOST PORT KEYS SIZE       -> {"keys":n,"ms":t}
//   node redis-agent.js busy  HOST PORT KEYS SIZE MBPS  -> {"ready":1}, then at SIGTERM or when the connection ends {"ops","bad","lastReplyAt","end","longestStepMs","longestStepAt","stalls"}
//   node redis-agent.js probe HOST PORT TIMEOUT_MS      -> {"firstReplyAt":t}
//   node redis-agent.js check HOST PORT KEYS SIZE       -> {"keys","dbsize","bad","missing","firstBad"}
// The data set is Redis's own DEBUG POPULATE: keys key:0 .. key:N-1, each
// value "value:<i>" padded with zero bytes to SIZE. The busy client rewrites
// random keys with those same values (so the check stays exact) and reads a few.
import { connectRetry, LineConn, now, paced } from './line-client';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Redis's DEBUG POPULATE value of key i. */
export function expectedValue(i: number, size: number): Buffer {
  const v = Buffer.alloc(size);
  v.write(`value:${i}`, 'latin1');
  return v;
}

type Reply = string | number | Buffer | null;

class RespClient {
  private constructor(private readonly conn: LineConn) {}

  static async connect(host: string, port: number, timeoutMs = 1_000): Promise<RespClient> {
    return new RespClient(await LineConn.connect(host, port, timeoutMs));
  }

  /** One reply: simple string, integer, bulk string (null when nil); an error reply throws. */
  private async reply(): Promise<Reply> {
    const l = await this.conn.line();
    const body = l.slice(1);
    switch (l[0]) {
      case '+': return body;
      case ':': return Number(body);
      case '-': throw new Error(`redis: ${body}`);
      case '$': return Number(body) < 0 ? null : this.conn.block(Number(body));
      default: throw new Error(`redis: unexpected '${l.slice(0, 80)}'`);
    }
  }

  /** Sends the commands pipelined and returns their replies in order. */
  async pipeline(cmds: Array<Array<string | Buffer>>): Promise<Reply[]> {
    const parts: Buffer[] = [];
    for (const c of cmds) {
      parts.push(Buffer.from(`*${c.length}\r\n`));
      for (const a of c) {
        const b = typeof a === 'string' ? Buffer.from(a, 'latin1') : a;
        parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n'));
      }
    }
    await this.conn.write(Buffer.concat(parts));
    const out: Reply[] = [];
    for (let i = 0; i < cmds.length; i++) out.push(await this.reply());
    return out;
  }

  close(): void {
    this.conn.close();
  }
}

const redisConnect = (host: string, port: number, timeoutMs = 10_000) => connectRetry(() => RespClient.connect(host, port), timeoutMs);

async function load(host: string, port: number, keys: number, size: number) {
  const t0 = now();
  const c = await redisConnect(host, port);
  await c.pipeline([['DEBUG', 'POPULATE', String(keys), 'key', String(size)]]);
  const [n] = await c.pipeline([['DBSIZE']]);
  c.close();
  if (n !== keys) throw new Error(`DEBUG POPULATE made ${n} keys, not ${keys}`);
  return { keys, ms: now() - t0 };
}

async function busy(host: string, port: number, keys: number, size: number, mbps: number) {
  let c: RespClient | undefined;
  let ops = 0, bad = 0, lastReplyAt = 0;
  const how = await paced(mbps, size, async () => { c = await redisConnect(host, port); }, async (n) => {
    const cmds: Array<Array<string | Buffer>> = [];
    for (let j = 0; j < n; j++) { const i = Math.floor(Math.random() * keys); cmds.push(['SET', `key:${i}`, expectedValue(i, size)]); }
    const ks = Array.from({ length: 4 }, () => Math.floor(Math.random() * keys));
    for (const i of ks) cmds.push(['GET', `key:${i}`]);
    const r = await c!.pipeline(cmds);
    ks.forEach((i, j) => { const v = r[n + j]; if (!(v instanceof Buffer) || !v.equals(expectedValue(i, size))) bad++; });
    ops += cmds.length;
    lastReplyAt = now();
  });
  c?.close();
  return { ops, bad, lastReplyAt, ...how };
}

async function probe(host: string, port: number, timeoutMs: number) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const c = await redisConnect(host, port, Math.max(1, end - Date.now()));
    try {
      const [r] = await c.pipeline([['PING']]);
      if (r === 'PONG') return { firstReplyAt: now() };
    } catch (e) {
      // Still loading, or a connection cut: try again until the deadline.
      if (Date.now() > end) throw e;
    } finally {
      c.close();
    }
    await sleep(2);
  }
}

async function check(host: string, port: number, keys: number, size: number) {
  const c = await redisConnect(host, port);
  const [dbsize] = await c.pipeline([['DBSIZE']]);
  let bad = 0, missing = 0, firstBad = -1;
  for (let i = 0; i < keys; i += 1000) {
    const ids: number[] = [];
    for (let j = i; j < Math.min(keys, i + 1000); j++) ids.push(j);
    const got = await c.pipeline(ids.map((j) => ['GET', `key:${j}`]));
    ids.forEach((j, k) => {
      const v = got[k];
      if (v === null) missing++;
      else if (!(v instanceof Buffer) || !v.equals(expectedValue(j, size))) bad++;
      else return;
      if (firstBad < 0) firstBad = j;
    });
  }
  c.close();
  return { keys, dbsize, bad, missing, firstBad };
}

async function main(argv: string[]): Promise<unknown> {
  const [cmd, host, p, ...rest] = argv;
  const port = Number(p);
  const n = rest.map(Number);
  switch (cmd) {
    case 'load': return load(host, port, n[0], n[1]);
    case 'busy': return busy(host, port, n[0], n[1], n[2]);
    case 'probe': return probe(host, port, n[0]);
    case 'check': return check(host, port, n[0], n[1]);
    default: throw new Error('usage: redis-agent load|busy|probe|check HOST PORT ...');
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (r) => { process.stdout.write(JSON.stringify(r) + '\n'); process.exit(0); },
    (e) => { process.stderr.write(`redis-agent: ${(e as Error).message}\n`); process.exit(1); },
  );
}
