// The process that fills a lazily restored tree's memory (hybrid and postcopy):
//
//   node lazy-fill-process.js IMAGES_DIR [THREADS]
//   stdin:  {"top": CHAIN_TOP_DIR, "cleanup": [DIR...], "agentPid": N}, then end
//           (postcopy: {"postcopy": {"file": PAGES_FILE}, ...} instead of "top",
//           one line, stdin staying open for {"tree": ROOT_PID} once restored;
//           fd 3 is then the agent's control socket, handed to the server as
//           is: "these pages are present" in, "this range is needed" out)
//   stdout: "ready" once it listens on IMAGES_DIR/lazy-pages.socket, where
//           `criu restore --lazy-pages -D IMAGES_DIR` hands over the tasks'
//           userfaultfds; "filled {stats}" once every page is in place
//
// It takes the place of CRIU's `criu lazy-pages` daemon with the addon's
// server (native/lazy_fill.cc): faults first, everything else in large copies
// on several threads straight from the page store's chain (read by the addon,
// no copy through JS), each store page given back once it is in the workload. It runs
// in its own session, apart from the agent: a restored workload still gets
// all of its memory if the agent dies meanwhile. It starts before the chain
// exists (Node's start-up stays out of the pause) and learns it on stdin; if
// stdin ends without it, the agent died before any restore, and it exits.
// Exit 0: every page is in place. If the fill fails after the tree ran, it
// says "failed {error}" and keeps the tree's userfaultfds open (its faults
// wait rather than read zeros) until ended: the agent stops the tree first. If the agent is gone by the
// end, it removes the cleanup dirs, which nobody else would; an agent still
// there removes them itself (CRIU's restore may still be writing).
import * as fs from 'node:fs';
import { addon } from '../native';
import { ChainReader } from '../store/chain-reader';
import { fillPlan } from './lazy-fill-plan';
import { PostcopyLayout } from '../postcopy/layout';
import { signalAll, treePids } from '../agent/process-tree';

/** The agent's end of the postcopy control socket (lazy-pages.ts). */
const CONTROL_FD = 3;

export const LAZY_SOCKET = 'lazy-pages.socket';

function alive(pid: number): boolean {
  if (!(pid > 1)) return false;
  try { process.kill(pid, 0); return true; } catch { return false; }
}

/** The restored tree's root, once the agent names it (postcopy). */
let treeRoot = 0;

/** The first line of stdin (the rest, if it stays open, names the tree). */
function readConfig(): Promise<string> {
  return new Promise((resolve) => {
    let text = '';
    let first = true;
    const line = (l: string) => {
      if (first) { first = false; resolve(l); return; }
      const pid = Number((JSON.parse(l) as { tree?: unknown }).tree);
      if (Number.isInteger(pid) && pid > 1) treeRoot = pid;
    };
    process.stdin.on('data', (d) => {
      text += d;
      for (let i = text.indexOf('\n'); i >= 0; i = text.indexOf('\n')) {
        line(text.slice(0, i));
        text = text.slice(i + 1);
      }
    });
    process.stdin.on('end', () => { if (first) resolve(text); });
    process.stdin.on('error', () => { if (first) resolve(''); });
  });
}

/**
 * Postcopy with the agent gone: nobody else will stop the tree, whose
 * missing memory can no longer come. Stop it (its faulting threads wait on
 * our userfaultfds; the others would run on).
 */
function stopTreeIfOrphaned(agentPid: number): boolean {
  if (!treeRoot || alive(agentPid)) return false;
  const pids = treePids(treeRoot);
  signalAll(pids, 'SIGSTOP');
  process.stderr.write(`lazy-fill: the agent is gone: stopped the tree (${pids.join(' ')}) that cannot get the rest of its memory\n`);
  return true;
}

async function main(): Promise<number> {
  // The agent reads our stdout; once it is dead a write there fails (EPIPE).
  // Unhandled, that error would end this process, closing the tree's
  // userfaultfds: its unfilled pages would then read as zeros.
  process.stdout.on('error', () => undefined);
  process.stdin.on('error', () => undefined);
  const [dir, threadsArg] = process.argv.slice(2);
  if (!dir) {
    process.stderr.write('usage: lazy-fill-process IMAGES_DIR [THREADS]\n');
    return 2;
  }
  // The restore connects to the socket's name relative to its work dir (the images dir).
  process.chdir(dir);
  const listenFd = addon().lazyFillListen(LAZY_SOCKET);
  process.stdout.write('ready\n');
  const text = await readConfig();
  if (!text.trim()) return 3;
  const o = JSON.parse(text) as { top?: string; postcopy?: { file: string }; cleanup?: string[]; agentPid?: number };
  let plan: Pick<ReturnType<typeof fillPlan>, 'files' | 'images'>;
  const chain = o.top !== undefined ? new ChainReader(o.top) : undefined;
  try {
    // Postcopy: the pages file fills while the tree runs (the agent says what arrived).
    plan = chain ? fillPlan('.', chain) : { files: [o.postcopy!.file], images: PostcopyLayout.read('.').fillImages() };
  } catch (e) {
    // Before any tree ran: exiting closes the socket, so the restore fails and is rolled back.
    process.stderr.write(`lazy-fill: ${(e as Error).message}\n`);
    return 1;
  } finally {
    chain?.close(); // the server opens the files itself
  }
  try {
    const threads = Number(threadsArg) > 0 ? Number(threadsArg) : 2;
    const traceDir = process.env.PHAUL_FAST_FILL_TRACE;
    const stats = await addon().lazyFillServe({ listenFd, files: plan.files, images: plan.images, threads,
      ...(o.postcopy ? { controlFd: CONTROL_FD } : {}), ...(traceDir ? { trace: true } : {}) });
    if (stats.trace) {
      // A timeline for measuring (PHAUL_FAST_FILL_TRACE=DIR): one file per fill.
      const t = stats.trace;
      delete stats.trace;
      try {
        fs.writeFileSync(`${traceDir}/fill-${Date.now()}-${process.pid}.json`, JSON.stringify({
          faults: Array.from(t.faults), reads: Array.from(t.reads), slices: Array.from(t.slices), punches: Array.from(t.punches), stats }));
      } catch (e) { process.stderr.write(`lazy-fill: trace: ${(e as Error).message}\n`); }
    }
    process.stderr.write(`lazy-fill: ${JSON.stringify(stats)}\n`);
    process.stdout.write(`filled ${JSON.stringify(stats)}\n`);
  } catch (e) {
    const why = (e as Error).message;
    process.stderr.write(`lazy-fill: ${why}\n`);
    if ((e as { reason?: string }).reason === 'restore') return 1; // no tree ran on us
    // The tree ran: its userfaultfds stay open here, so its faults wait
    // instead of reading zeros, until whoever stops the tree ends us.
    process.stdout.write(`failed ${JSON.stringify({ error: why })}\n`);
    if (!alive(Number(o.agentPid) || 0)) {
      process.stderr.write('lazy-fill: the agent is gone: holding the tree\'s userfaultfds so that it cannot read unfilled ' +
        'pages as zeros; stop or kill the tree before ending this process\n');
    }
    // Should the agent die meanwhile, with the tree still running (postcopy names it), stop it ourselves.
    await new Promise(() => {
      const watch = setInterval(() => { if (stopTreeIfOrphaned(Number(o.agentPid) || 0)) clearInterval(watch); }, 100);
    });
  }
  if (!alive(Number(o.agentPid) || 0)) {
    for (const d of o.cleanup ?? []) {
      try { fs.rmSync(d, { recursive: true, force: true }); } catch (e) { process.stderr.write(`lazy-fill: clean-up of ${d}: ${(e as Error).message}\n`); }
    }
  }
  return 0;
}

main().then((code) => { process.exitCode = code; }, (e) => {
  process.stderr.write(`lazy-fill: ${(e as Error)?.message ?? e}\n`);
  process.exitCode = 1;
});
