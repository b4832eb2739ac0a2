// Memcached client helper, run inside a host's network namespace (nsenter
// --net=...: the benchmark process itself cannot open sockets there).
//   node mc-agent.js load  HOST PORT ITEMS SIZE          -> {"items":n,"ms":t}
//   node mc-agent.js busy  HOST PORT ITEMS SIZE MBPS     -> {"ready":1}, then at SIGTERM or when the connection ends {"ops","bad","lastReplyAt","end","longestStepMs","longestStepAt","stalls"}
//   node mc-agent.js probe HOST PORT TIMEOUT_MS          -> {"firstReplyAt":t}
//   node mc-agent.js check HOST PORT ITEMS SIZE          -> {"items","bad","missing","firstBad"}
// Times are epoch milliseconds with sub-ms precision, comparable across processes.
import { McClient } from './mc-client';
import { connectRetry, now, paced } from './line-client';

export const key = (i: number) => `k${i}`;
/** The value of item i: its key repeated, so a swapped, stale or zeroed item never passes. */
export const value = (i: number, size: number) => Buffer.alloc(size, `${key(i)}.`);

const mcConnect = (host: string, port: number) => connectRetry(() => McClient.connect(host, port, 1_000), 10_000);

async function load(host: string, port: number, items: number, size: number) {
  const t0 = now();
  const c = await mcConnect(host, port);
  for (let i = 0; i < items; i += 64) {
    const batch: Array<[string, Buffer]> = [];
    for (let j = i; j < Math.min(items, i + 64); j++) batch.push([key(j), value(j, size)]);
    await c.setMany(batch);
  }
  c.close();
  return { items, ms: now() - t0 };
}

/** Sets at the given rate and checks a few gets every millisecond, until SIGTERM. */
async function busy(host: string, port: number, items: number, size: number, mbps: number) {
  let c: McClient | undefined;
  let ops = 0, bad = 0, lastReplyAt = 0;
  const how = await paced(mbps, size, async () => { c = await mcConnect(host, port); }, async (n) => {
    const sets: Array<[string, Buffer]> = [];
    for (let j = 0; j < n; j++) { const i = Math.floor(Math.random() * items); sets.push([key(i), value(i, size)]); }
    await c!.setMany(sets);
    const ks = Array.from({ length: 4 }, () => Math.floor(Math.random() * items));
    const got = await c!.getMany(ks.map(key));
    for (const i of ks) if (!got.get(key(i))?.equals(value(i, size))) bad++;
    ops += n + ks.length;
    lastReplyAt = now();
  });
  c?.close();
  return { ops, bad, lastReplyAt, ...how };
}

async function probe(host: string, port: number, timeoutMs: number) {
  const c = await connectRetry(() => McClient.connect(host, port, 1_000), timeoutMs);
  await c.getMany([key(0)]);
  const firstReplyAt = now();
  c.close();
  return { firstReplyAt };
}

async function check(host: string, port: number, items: number, size: number) {
  const c = await mcConnect(host, port);
  let bad = 0, missing = 0, firstBad = -1;
  for (let i = 0; i < items; i += 100) {
    const ids: number[] = [];
    for (let j = i; j < Math.min(items, i + 100); j++) ids.push(j);
    const got = await c.getMany(ids.map(key));
    for (const j of ids) {
      const v = got.get(key(j));
      if (!v) missing++;
      else if (!v.equals(value(j, size))) bad++;
      else continue;
      if (firstBad < 0) firstBad = j;
    }
  }
  c.close();
  return { items, bad, missing, firstBad };
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
    default: throw new Error(`usage: mc-agent load|busy|probe|check HOST PORT ...`);
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (r) => { process.stdout.write(JSON.stringify(r) + '\n'); process.exit(0); },
    (e) => { process.stderr.write(`mc-agent: ${(e as Error).message}\n`); process.exit(1); },
  );
}
