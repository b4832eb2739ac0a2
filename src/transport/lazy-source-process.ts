// The process that answers CRIU's lazy-pages daemon in hybrid mode:
//
//   node lazy-source-process.js CHAIN_TOP_DIR HEADER_SIZE [CLEANUP_DIR...]
//   node lazy-source-process.js - DAEMON_PID   (the same as JSON on stdin: {"top","headerSize","cleanup","agentPid"})
//
// with the daemon's page-server socket as fd 3. The stdin form lets the agent
// start it (Node's start-up: ~40 ms) before the chain exists. If stdin ends
// without it, the agent died before any restore: no tree will ever connect to
// the daemon, which would wait for one forever, so this ends it. It reads the pages from the
// parent-image chain the page store wrote (src/store/chain-reader.ts), not
// from the agent: it runs in its own session, like the daemon, so a restored
// workload still gets all of its memory if the agent dies meanwhile (which,
// with the agent as the source, would leave the daemon without pages and the
// workload reading zeros). It exits 0 once the daemon says it is done. If the
// agent is gone by then, it removes CLEANUP_DIRs, which nobody else would; an
// agent still there removes them itself (CRIU's restore may still be writing).
import * as fs from 'node:fs';
import * as net from 'node:net';
import { ChainReader } from '../store/chain-reader';
import { serveLazyPages } from './lazy-page-server';
import { within } from '../util/deadline';

function alive(pid: number): boolean {
  if (!(pid > 1)) return false;
  try { process.kill(pid, 0); return true; } catch { return false; }
}

async function readStdin(): Promise<string> {
  let text = '';
  for await (const chunk of process.stdin) text += chunk;
  return text;
}

async function main(): Promise<number> {
  let [top, hs, ...cleanup] = process.argv.slice(2);
  let agentPid = 0;
  if (top === '-') {
    const daemon = Number(hs);
    const text = await readStdin();
    if (!text.trim()) {
      if (Number.isInteger(daemon) && daemon > 1) try { process.kill(daemon, 'SIGKILL'); } catch { /* gone */ }
      return 3;
    }
    const o = JSON.parse(text) as { top: string; headerSize: number; cleanup?: string[]; agentPid?: number };
    [top, hs, cleanup] = [o.top, String(o.headerSize), o.cleanup ?? []];
    agentPid = Number(o.agentPid) || 0;
  }
  const headerSize = Number(hs);
  if (!top || (headerSize !== 24 && headerSize !== 32)) {
    process.stderr.write('usage: lazy-source-process CHAIN_TOP_DIR 24|32 [CLEANUP_DIR...]\n');
    return 2;
  }
  const chain = new ChainReader(top);
  const sock = new net.Socket({ fd: 3, readable: true, writable: true });
  try {
    const st = await serveLazyPages(sock, chain, headerSize);
    process.stderr.write(`lazy-source: served ${st.pages} pages in ${st.requests} requests\n`);
    // The daemon may close first; do not wait on a flush that cannot happen.
    await within(new Promise<void>((r) => sock.end(() => r())), 2000);
    sock.destroy();
    chain.close();
    if (!alive(agentPid)) {
      for (const d of cleanup) {
        try { fs.rmSync(d, { recursive: true, force: true }); } catch (e) { process.stderr.write(`lazy-source: clean-up of ${d}: ${(e as Error).message}\n`); }
      }
    }
    return 0;
  } catch (e) {
    // Left for the agent (if it is still there) to read our log and clean up.
    process.stderr.write(`lazy-source: ${(e as Error).message}\n`);
    chain.close();
    return 1;
  }
}

main().then((code) => { process.exitCode = code; }, (e) => {
  process.stderr.write(`lazy-source: ${(e as Error)?.message ?? e}\n`);
  process.exitCode = 1;
});
