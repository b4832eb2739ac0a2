// `npm run demo`: one real migration on this machine, narrated. Two network
// namespaces act as two hosts joined by a veth pair; a destination agent runs
// on host b; a self-verifying 256 MiB workload that keeps writing runs on host
// a; phaul-fast moves it in hybrid mode (memory moves while it runs, then the
// destination resumes it and fills the rest from its own copy), and the
// workload checks every page on arrival.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { createTwoHosts, inHost, TwoHosts } from './testing/hosts';
import { MemWorkload, startMemWorkload } from './testing/workload';
import { PACKAGE_ROOT } from './package-root';

const CLI = path.join(PACKAGE_ROOT, 'dist', 'src', 'cli', 'main.js');
const say = (s: string) => process.stdout.write(`${s}\n`);

function run(argv: string[], opts: { echo?: boolean } = {}): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    const p = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => { out += d; if (opts.echo) process.stdout.write(d); });
    p.stderr.on('data', (d) => { err += d; if (opts.echo) process.stdout.write(d); });
    p.on('close', (code) => resolve({ code: code ?? 1, out, err }));
  });
}

async function main(): Promise<number> {
  if (process.getuid?.() !== 0) {
    process.stderr.write('demo: run as root (CRIU and network namespaces need it)\n');
    return 3;
  }
  say('== phaul-fast demo: live-migrate a running process between two hosts ==\n');
  say('$ phaul-fast check');
  const check = await run([process.execPath, CLI, 'check'], { echo: true });
  if (check.code !== 0) return check.code;

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'phaul-demo-'));
  const tokenFile = path.join(dir, 'token');
  fs.writeFileSync(tokenFile, crypto.randomBytes(24).toString('hex'), { mode: 0o600 });
  let hosts: TwoHosts | undefined;
  let w: MemWorkload | undefined;
  let serve: ReturnType<typeof spawn> | undefined;
  let restored = 0;
  try {
    hosts = await createTwoHosts({ prefix: 'pfdemo' });
    say(`\nhost a: network namespace ${hosts.a.name} (${hosts.a.addr})`);
    say(`host b: network namespace ${hosts.b.name} (${hosts.b.addr}), joined by a veth pair`);

    const port = 7400;
    const serveArgv = inHost(hosts.b, [process.execPath, CLI, 'serve', '--listen', `${hosts.b.addr}:${port}`,
      '--dir', path.join(dir, 'dest'), '--token-file', tokenFile]);
    say(`\n[host b] $ phaul-fast serve --listen ${hosts.b.addr}:${port} --dir ${path.join(dir, 'dest')} --token-file ${tokenFile}`);
    serve = spawn(serveArgv[0], serveArgv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
    let serveLog = '';
    serve.stderr!.on('data', (d) => { serveLog += d; });
    const end = Date.now() + 15_000;
    while (!/listening/.test(serveLog)) {
      if (Date.now() > end || serve.exitCode !== null) throw new Error(`serve did not start: ${serveLog}`);
      await new Promise((r) => setTimeout(r, 20));
    }

    say('\n[host a] starting the workload: 256 MiB, rewriting 20 MB/s, every page checkable');
    w = await startMemWorkload({ mib: 256, writeMBps: 20, netns: hosts.a.netnsPath! });
    const before = await w.report();
    say(`[host a] workload pid ${w.pid}: ${before.pages} pages, verified ${before.ok ? 'OK' : 'BAD'}`);
    await new Promise((r) => setTimeout(r, 500));
    await w.resetGap();

    say(`\n[host a] $ phaul-fast migrate --pid ${w.pid} --to ${hosts.b.addr}:${port} --token-file ${tokenFile} --mode hybrid --json`);
    const m = await run(inHost(hosts.a, [process.execPath, CLI, 'migrate', '--pid', String(w.pid),
      '--to', `${hosts.b.addr}:${port}`, '--token-file', tokenFile, '--mode', 'hybrid', '--json']));
    process.stdout.write(m.err);
    const report = JSON.parse(m.out.trim().split('\n').pop() || '{}');
    say(JSON.stringify(report, null, 2));
    if (m.code !== 0 || !report.ok) {
      say(`\nmigration failed (exit ${m.code}); the workload still runs on host a: ${w.lastReport()?.ok}`);
      return m.code || 1;
    }
    restored = report.restoredPid;
    w.adopt(restored);
    const after = await w.report(restored);
    const netns = fs.readlinkSync(`/proc/${restored}/ns/net`);
    const onB = netns === `net:[${fs.statSync(hosts.b.netnsPath!).ino}]`;
    say(`\n[host b] workload now pid ${restored} ${onB ? '(in host b\'s network namespace)' : '(NOT on host b?)'}`);
    say(`[host b] it verified all ${after.pages} pages: ${after.ok ? 'OK' : `BAD (${after.badPages} bad)`}`);
    say(`[host b] the longest pause the workload itself saw: ${after.maxGapMs.toFixed(1)} ms ` +
      `(engine downtime ${report.downtimeMs} ms, mode ${report.mode}` +
      `${report.filledMs !== undefined ? `; memory complete ${report.filledMs} ms after the freeze` : ''})`);
    say(`[host a] original pid ${w.pid}: ${fs.existsSync(`/proc/${w.pid}`) ? 'still present?!' : 'gone (it never runs twice)'}`);
    return after.ok && onB ? 0 : 1;
  } finally {
    await w?.stop(restored);
    serve?.kill('SIGTERM');
    await hosts?.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().then((code) => { process.exitCode = code; }, (e) => {
  process.stderr.write(`demo: ${e instanceof Error ? e.message : e}\n`);
  process.exitCode = 1;
});
