// The package as another project gets it: `npm pack`, installed from the
// tarball into a fresh project. Without the addon the library still imports
// and `npx phaul-fast check` says in one line what to run; `npm rebuild
// phaul-fast` builds the addon against the CRIU found through
// $PHAUL_FAST_CRIU_PREFIX (this checkout's); then docs/examples/embed.js, run
// from that project, moves a real process tree (a sleep in its own pid
// namespace, so the cost stays small) through the library API.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PACKAGE_ROOT } from '../src/package-root';
import { startInPidNamespace } from '../src/testing/workload';
import { isAlive, procComm, signal, sleep, waitGone } from '../src/testing/proc';

const root = process.getuid?.() === 0;

function run(argv: string[], cwd: string, env: Record<string, string> = {}, timeoutMs = 300_000): SpawnSyncReturns<string> {
  const r = spawnSync(argv[0]!, argv.slice(1), { cwd, env: { ...process.env, ...env }, encoding: 'utf8', timeout: timeoutMs });
  if (r.error) throw r.error;
  return r;
}

const ok = (r: SpawnSyncReturns<string>, what: string) => assert.equal(r.status, 0, `${what}: ${r.stderr.trim().split('\n').slice(-5).join(' | ')}`);

test('installed from its tarball: imports without the addon, check says what to run, a migration through the library API', { skip: root ? false : 'needs root (CRIU)', timeout: 900_000 }, async () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'phaul-embed-test-'));
  const project = path.join(tmp, 'project');
  let restored = -1;
  let ns: ReturnType<typeof startInPidNamespace> | undefined;
  try {
    const pack = run(['npm', 'pack', '--silent', '--pack-destination', tmp], PACKAGE_ROOT);
    ok(pack, 'npm pack');
    const tgz = path.join(tmp, pack.stdout.trim().split('\n').pop()!);
    fs.mkdirSync(project);
    fs.writeFileSync(path.join(project, 'package.json'), JSON.stringify({ name: 'embedder', version: '1.0.0', private: true }));
    ok(run(['npm', 'install', '--ignore-scripts', '--no-audit', '--no-fund', '--prefer-offline', tgz], project), 'npm install');

    const installed = path.join(project, 'node_modules', 'phaul-fast');
    for (const absent of ['test', 'dist/test', 'bench', 'build', '.criu', 'dist/src/testing', 'tsconfig.json'])
      assert.ok(!fs.existsSync(path.join(installed, absent)), `the package ships ${absent}`);

    const imp = run([process.execPath, '-e', "const p = require('phaul-fast'); console.log(typeof p.Migration, typeof p.DestinationAgent)"], project);
    ok(imp, 'require without the addon');
    assert.equal(imp.stdout.trim(), 'function function');

    const check = run(['npx', '--no-install', 'phaul-fast', 'check'], project);
    assert.equal(check.status, 3, check.stderr);
    assert.match(check.stderr.split('\n')[0]!, /^phaul-fast check: the native addon is not built .*: run `npx phaul-fast setup` as root/);
    assert.doesNotMatch(check.stderr, /^\s+at /m);

    const prefix = path.join(PACKAGE_ROOT, '.criu');
    const env: Record<string, string> = fs.existsSync(path.join(prefix, 'lib', 'pkgconfig', 'criu.pc')) ? { PHAUL_FAST_CRIU_PREFIX: prefix } : {};
    ok(run(['npm', 'rebuild', 'phaul-fast', '--foreground-scripts'], project, env, 600_000), 'npm rebuild phaul-fast');
    assert.ok(fs.existsSync(path.join(installed, 'build', 'Release', 'phaul_fast.node')), 'the install hook built the addon');

    const checked = run(['npx', '--no-install', 'phaul-fast', 'check', '--json'], project);
    const report = JSON.parse(checked.stdout.trim().split('\n').pop()!) as { modes: Record<string, boolean> };
    assert.equal(report.modes['stop-copy'], true, checked.stderr);

    fs.copyFileSync(path.join(PACKAGE_ROOT, 'docs', 'examples', 'embed.js'), path.join(project, 'embed.js'));
    ns = startInPidNamespace(['sleep', '600'], { stderr: 'ignore' });
    let pid = -1;
    for (const end = Date.now() + 10_000; (pid = ns.initPid()) < 0 || procComm(pid) !== 'sleep';) {
      assert.ok(Date.now() < end, `the workload did not start (${ns.exited ?? 'running'})`);
      await sleep(20);
    }
    const r = run([process.execPath, 'embed.js', String(pid), 'stop-copy'], project);
    ok(r, 'embed.js');
    const m = JSON.parse(r.stdout.trim().split('\n').pop()!) as { ok: boolean; mode: string; restoredPid: number };
    restored = m.restoredPid;
    assert.equal(m.ok, true);
    assert.equal(m.mode, 'stop-copy');
    assert.ok(isAlive(restored) && procComm(restored) === 'sleep', `restored pid ${restored} is not a running sleep`);
    assert.ok(await waitGone(pid, 10_000), 'the original still runs after the migration');
  } finally {
    if (restored > 0) signal(restored, 'SIGKILL');
    const init = ns?.initPid() ?? -1;
    if (init > 0 && isAlive(init)) signal(init, 'SIGKILL');
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
