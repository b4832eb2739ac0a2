// `phaul-fast check` against this machine's real facts. The expected answers
// come from an independent source (the kernel's own config and release, and
// CRIU's own feature checks), never from the code under test; where that
// source is missing or says a feature cannot be there, the test skips and says why.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { checkSystem, MODES, type SystemReport } from '../src/check';
import { judgeModes, localCapabilities, pickAuto } from '../src/agent/capabilities';
import { compareVersions } from '../src/check/criu';

const MAIN = path.join(__dirname, '..', 'src', 'cli', 'main.js');

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [MAIN, ...args], { timeout: 120_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** The running kernel's build config, or null when neither /proc/config.gz nor /boot has it. */
function kernelConfig(): string | null {
  try {
    return zlib.gunzipSync(fs.readFileSync('/proc/config.gz')).toString('utf8');
  } catch { /* try /boot */ }
  try {
    return fs.readFileSync(`/boot/config-${os.release()}`, 'utf8');
  } catch {
    return null;
  }
}
const config = kernelConfig();
const configSays = (name: string): boolean | null => {
  if (!config) return null;
  if (new RegExp(`^${name}=[ym]$`, 'm').test(config)) return true;
  return false;
};
const kernelAtLeast = (v: string) => compareVersions(os.release().split('-')[0], v) >= 0;

let report: SystemReport;
let json: { code: number; stdout: string; stderr: string };

test('check --json: the last line of stdout is the report, exit 0 when a mode works', async () => {
  json = await cli(['check', '--json']);
  const lines = json.stdout.trim().split('\n');
  report = JSON.parse(lines[lines.length - 1]);
  for (const k of ['softDirty', 'uffdWpAsync', 'pagemapScan', 'lazyPages', 'freezer', 'nftables'] as const)
    assert.equal(typeof report.features[k], 'boolean', `features.${k}`);
  for (const m of MODES) assert.equal(typeof report.modes[m], 'boolean', `modes.${m}`);
  assert.equal(typeof report.criu.ok, 'boolean');
  assert.ok('path' in report.criu && 'version' in report.criu);
  // The modes follow the capability model's rules from the reported facts.
  assert.deepEqual(report.modeDetails, judgeModes(report.facts));
  for (const m of MODES) assert.equal(report.modes[m], report.modeDetails[m].available, m);
  assert.deepEqual(Object.keys(report.modes).sort(), [...MODES].sort(), 'exactly the migrate modes');
  const any = MODES.some((m) => report.modes[m]);
  assert.equal(json.code, any ? 0 : 1, json.stderr);
});

test("check's available modes are exactly those migrate accepts and this host offers a peer", async () => {
  const available = MODES.filter((m) => report.modes[m]);
  assert.deepEqual((await localCapabilities()).modes, available, 'the handshake offers what check reports');
  const help = await cli(['migrate', '--help']);
  const listed = /how to move memory: auto, ([^(\n]+)/.exec(help.stdout)?.[1].split(',').map((x) => x.trim());
  assert.deepEqual(listed, [...MODES], help.stdout);
  for (const m of MODES.filter((x) => !report.modes[x])) assert.match(report.modeDetails[m].why, /./, `${m} says why not`);
  assert.equal(report.autoMode, available.length ? pickAuto(available) : null);
  // A mode check does not list is refused by migrate as a usage error, before anything is touched.
  const r = await cli(['migrate', '--pid', '1', '--to', '127.0.0.1:1', '--token-file', '/dev/null', '--mode', 'pagecopy', '--json']);
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /--mode must be auto or one of stop-copy, precopy, hybrid, postcopy/);
  const failure = JSON.parse(r.stdout.trim().split('\n').pop()!);
  assert.equal(failure.rolledBack, false, 'nothing was touched, so nothing was rolled back');
});

test('CRIU is found, passes criu check over the CLI and libcriu, and is >= 4.1', (t) => {
  if (!report.criu.path) return t.skip(`no CRIU binary on this machine (${report.criu.check}): run npm run setup`);
  assert.equal(report.criu.checkOk, true, report.criu.check);
  assert.equal(report.criu.rpcOk, true, report.criu.rpcDetail);
  assert.equal(report.criu.ok, true);
  assert.ok(report.criu.version && compareVersions(report.criu.version, '4.1') >= 0, `version ${report.criu.version}`);
  assert.equal(report.modes['stop-copy'], true);
});

test('soft-dirty matches CONFIG_MEM_SOFT_DIRTY and CRIU\'s mem_dirty_track', (t) => {
  const built = configSays('CONFIG_MEM_SOFT_DIRTY');
  if (built === null) return t.skip('kernel config not readable (no /proc/config.gz or /boot/config-*): nothing independent to compare with');
  assert.equal(report.features.softDirty, built, report.details.softDirty);
  if (report.criu.checkOk) assert.equal(report.features.softDirty, report.criu.features.mem_dirty_track, 'agrees with criu check --feature mem_dirty_track');
});

test('the zero-page probe agrees with the kernel command line (pvm_no_zero_page=1 means reads allocate)', () => {
  const cmdline = fs.readFileSync('/proc/cmdline', 'utf8');
  const noZeroPage = /(^|\s)pvm_no_zero_page=(1|y|on)(\s|$)/.test(cmdline);
  assert.equal(report.details.zeroPage, !noZeroPage, report.details.zeroPageDetail);
  assert.match(report.details.zeroPageDetail, /reading \d+ untouched pages made \d+ resident/);
});

test('uffd-wp async is detected where the kernel has it', (t) => {
  if (!kernelAtLeast('6.7')) return t.skip(`kernel ${os.release()} predates UFFD_FEATURE_WP_ASYNC (6.7)`);
  if (configSays('CONFIG_USERFAULTFD') === false) return t.skip('kernel built without CONFIG_USERFAULTFD');
  if (configSays('CONFIG_HAVE_ARCH_USERFAULTFD_WP') === false) return t.skip(`${os.machine()} has no userfaultfd write-protect`);
  assert.equal(report.features.uffdWpAsync, true, report.details.uffdWpAsync);
  assert.equal(report.details.wpTracking, true, report.details.wpTrackingDetail);
});

test('the write-protect fault is timed where uffd-wp tracking works: every protected page faulted once, dearer than a plain write', (t) => {
  if (!report.details.wpTracking) return t.skip(`no uffd-wp tracking here: ${report.details.wpTrackingDetail}`);
  assert.ok(report.details.wpFaultUs !== null, report.details.wpFaultDetail);
  assert.match(report.details.wpFaultDetail, /^first write to a write-protected page [\d.]+ us of CPU \(2048 of 2048 writes faulted;/);
  assert.ok(report.details.wpFaultUs! > 0, report.details.wpFaultDetail);
});

test('PAGEMAP_SCAN is detected where the kernel has it, as CRIU sees it', (t) => {
  if (!kernelAtLeast('6.7')) return t.skip(`kernel ${os.release()} predates PAGEMAP_SCAN (6.7)`);
  assert.equal(report.features.pagemapScan, true, report.details.pagemapScan);
  if (report.criu.checkOk) assert.equal(report.criu.features.pagemap_scan, true, 'criu check --feature pagemap_scan');
});

test('lazy pages follow userfaultfd and fs.pipe-max-size', () => {
  const pipe = Number(fs.readFileSync('/proc/sys/fs/pipe-max-size', 'utf8'));
  assert.equal(report.details.pipeMaxSize, pipe);
  if (pipe < 4 * 1024 * 1024) assert.equal(report.features.lazyPages, false, 'pipes below 4 MiB break CRIU lazy dumps');
  else assert.equal(report.features.lazyPages, report.details.userfaultfd && (!report.criu.checkOk || report.criu.features['uffd-noncoop']));
});

test('freezer and nftables are reported with evidence', () => {
  const mounts = fs.readFileSync('/proc/self/mounts', 'utf8');
  const hasCgroupFs = /\scgroup2\s/.test(mounts) || /\scgroup\s\S*freezer/.test(mounts);
  if (!hasCgroupFs) assert.equal(report.features.freezer, false);
  if (report.features.freezer) assert.ok(report.details.freezer.v1 || report.details.freezer.v2);
  // No probe cgroup is left behind.
  for (const dir of [report.details.freezer.v1, report.details.freezer.v2]) {
    if (dir) assert.deepEqual(fs.readdirSync(dir).filter((n) => n.startsWith(`phaul-fast-probe-`)), []);
  }
  if (report.criu.checkOk) assert.equal(report.features.nftables, report.criu.features.network_lock_nftables);
});

test('the library API gives the same facts as the CLI', async () => {
  const lib = await checkSystem();
  assert.deepEqual(lib.features, report.features);
  assert.deepEqual(lib.modes, report.modes);
  assert.equal(lib.criu.version, report.criu.version);
});

test('human output lists each item with what it enables, and exactly the migrate modes', async () => {
  const r = await cli(['check']);
  assert.equal(r.code, json.code);
  for (const item of ['criu', 'dirty tracking', 'uffd-wp async', 'PAGEMAP_SCAN', 'lazy dump', 'lazy restore', 'soft-dirty', 'freezer', 'nftables', 'kernel', 'cpu'])
    assert.match(r.stdout, new RegExp(`^  ${item}: `, 'm'), item);
  assert.match(r.stdout, /lazy restore: .* — enables hybrid, postcopy/);
  // Nothing claims a path no code has: CRIU's own --track-mem pre-copy, a freezer-based switchover.
  assert.doesNotMatch(r.stdout, /track-mem|pre-dump|freezing a whole/);
  const listed = [...r.stdout.matchAll(/^  (\S+)\s+(available|unavailable) \(/gm)].map((m) => m[1]);
  assert.deepEqual(listed, [...MODES]);
  for (const m of MODES) assert.match(r.stdout, new RegExp(`^  ${m}\\s+${report.modes[m] ? 'available' : 'unavailable'} `, 'm'), m);
  if (report.autoMode) assert.match(r.stdout, new RegExp(`migrate --mode auto picks ${report.autoMode} here`));
});

test('without a working CRIU no mode is available: exit 1 and what to install', async () => {
  const r = await cli(['check', '--json', '--criu', '/nonexistent/criu']);
  assert.equal(r.code, 1);
  const rep: SystemReport = JSON.parse(r.stdout.trim().split('\n').pop()!);
  assert.equal(rep.criu.ok, false);
  assert.ok(MODES.every((m) => rep.modes[m] === false));
  assert.match(r.stderr, /criu: .*npm run setup/);
});

test('--help and a bad flag', async () => {
  const h = await cli(['check', '--help']);
  assert.equal(h.code, 0);
  assert.match(h.stdout, /usage: phaul-fast check/);
  assert.match(h.stdout, /--json/);
  const bad = await cli(['check', '--bogus']);
  assert.equal(bad.code, 2);
  assert.equal(bad.stdout, '');
  assert.equal(bad.stderr.trim().split('\n').length, 1, bad.stderr);
  assert.match(bad.stderr, /--bogus/);
});

test('check names the container runtimes it finds and whether migrate --container can move their containers', async () => {
  const r = await cli(['check', '--json']);
  const rep: SystemReport = JSON.parse(r.stdout.trim().split('\n').pop()!);
  const runc = rep.runtimes.find((x) => x.name === 'runc');
  assert.ok(runc, 'runc is always reported, found or not');
  const found = (process.env.PATH ?? '').split(':').some((d) => fs.existsSync(path.join(d, 'runc')));
  assert.equal(runc.path !== null, found, JSON.stringify(runc));
  if (found) {
    assert.equal(runc.migratable, rep.criu.ok && rep.features.nftables, runc.detail);
    assert.match(runc.detail, /network/);
  }
  const crun = rep.runtimes.find((x) => x.name === 'crun')!;
  assert.equal(crun.migratable, false, 'crun containers do not move');
  if (crun.path) assert.match(crun.detail, /CRIU/);
  // podman's move through runc: only where runc's do.
  const podman = rep.runtimes.find((x) => x.name === 'podman')!;
  assert.equal(podman.migratable, podman.path !== null && runc.migratable, podman.detail);
  if (podman.migratable) assert.match(podman.detail, /stop-copy and precopy/);
  const human = await cli(['check']);
  assert.match(human.stdout, /^container runtimes:\n {2}runc: /m);
});
