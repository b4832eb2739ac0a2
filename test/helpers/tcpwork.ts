// build/workloads/tcpwork (test/workloads/tcpwork.c): a server and a client
// with an established TCP connection between them, in a pid and network
// namespace of their own, exchanging data; SIGUSR1 makes it write a report.
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { type PidNamespaceProcess, startInPidNamespace } from '../../src/testing/workload';
import { sleep } from '../../src/testing/proc';
import { PACKAGE_ROOT } from '../../src/package-root';

export interface TcpWork {
  ns: PidNamespaceProcess;
  /** The pid namespace's init (the tree to migrate). */
  pid: number;
  report: string;
}

/** Starts tcpwork inside the network namespace at netnsPath (it unshares one of its own below it). */
export async function startTcpWork(netnsPath: string, report: string): Promise<TcpWork> {
  const ns = startInPidNamespace(['unshare', '-n', path.join(PACKAGE_ROOT, 'build', 'workloads', 'tcpwork'), report], { netns: netnsPath });
  const readReport = () => { try { return JSON.parse(fs.readFileSync(report, 'utf8')); } catch { return null; } };
  let pid = -1;
  const end = Date.now() + 10_000;
  while ((pid = ns.initPid()) < 0 || !readReport()) {
    assert.ok(Date.now() < end, `tcpwork did not start: ${ns.stderr()}`);
    await sleep(20);
  }
  return { ns, pid, report };
}

/** Asks tcpwork (or its copy, pid) for a report; `diagnose` adds to the error if none comes. */
export async function askTcp(pid: number, report: string, diagnose = () => ''): Promise<any> {
  const old = fs.statSync(report).mtimeMs;
  process.kill(pid, 'SIGUSR1');
  const end = Date.now() + 5000;
  while (Date.now() < end) {
    if (fs.statSync(report).mtimeMs !== old) return JSON.parse(fs.readFileSync(report, 'utf8'));
    await sleep(10);
  }
  const state = (p: number) => { try { return `${fs.readFileSync(`/proc/${p}/stat`, 'utf8').split(' ')[2]}/${fs.readFileSync(`/proc/${p}/wchan`, 'utf8')}`; } catch { return 'gone'; } };
  const tasks = (() => { try { return fs.readdirSync(`/proc/${pid}/task`); } catch { return []; } })();
  throw new Error(`tcpwork did not report (tasks ${tasks.map((t) => `${t}:${state(Number(t))}`).join(' ')}; ${diagnose()})`);
}
