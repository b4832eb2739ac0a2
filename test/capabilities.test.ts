// The handshake's rules without a peer: which mode 'auto' picks from the two
// hosts' lists, and what makes two hosts incompatible.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { AUTO_ORDER, autoMode, incompatibility, isMode, judgeModes, MODES, pickAuto, type Capabilities, type HostFacts } from '../src/agent/capabilities';
import { checkCapabilities } from '../src/protocol/messages';

const caps = (modes: string[], over: Partial<Capabilities> = {}): Capabilities => ({
  phaulVersion: '0.1.0', criu: { major: 4, minor: 2, sublevel: 1 }, kernel: '6.18.0', arch: 'x64', modes, ...over,
});

test('auto picks the best mode both hosts offer', () => {
  const all = ['stop-copy', 'precopy', 'hybrid'];
  assert.equal(autoMode(caps(all), caps(all)), 'hybrid');
  assert.equal(autoMode(caps(all), caps(['stop-copy', 'precopy'])), 'precopy', 'an older destination without hybrid');
  assert.equal(autoMode(caps(['stop-copy']), caps(all)), 'stop-copy', 'a source kernel without uffd-wp tracking');
  assert.equal(autoMode(caps([]), caps([])), 'stop-copy');
});

test('incompatible: architecture, CRIU before and after 4.2, a mode one side lacks', () => {
  const all = ['stop-copy', 'precopy', 'hybrid'];
  assert.equal(incompatibility(caps(all), caps(all), 'hybrid'), undefined);
  assert.match(incompatibility(caps(all), caps(all, { arch: 'arm64' }), 'stop-copy')!, /architectures differ/);
  assert.match(incompatibility(caps(all), caps(all, { criu: { major: 4, minor: 1, sublevel: 1 } }), 'stop-copy')!, /4\.2 changed/);
  assert.equal(incompatibility(caps(all, { criu: { major: 5, minor: 0, sublevel: 0 } }), caps(all), 'stop-copy'), undefined);
  assert.match(incompatibility(caps(['stop-copy']), caps(all), 'hybrid')!, /not available on the source/);
  assert.match(incompatibility(caps(all), caps(['stop-copy']), 'precopy')!, /not available on the destination/);
});

test('capabilities from the network are checked before use', () => {
  assert.deepEqual(checkCapabilities(caps(['stop-copy'])), caps(['stop-copy']));
  for (const bad of [undefined, 'x', { ...caps([]), modes: 'hybrid' }, { ...caps([]), criu: { major: -1, minor: 0, sublevel: 0 } },
    { ...caps([]), modes: new Array(16).fill('x') }, { ...caps([]), kernel: 5 }]) {
    assert.equal(checkCapabilities(bad), undefined, JSON.stringify(bad));
  }
});

test('the mode rules: a mode is available exactly when every fact it needs holds, and says what is missing', () => {
  const yes = { ok: true, detail: 'fine' };
  const all: HostFacts = { criu: yes, dirtyTracking: yes, lazyDump: yes, lazyRestore: yes };
  const avail = (f: HostFacts) => MODES.filter((m) => judgeModes(f)[m].available);
  assert.deepEqual(avail(all), ['stop-copy', 'precopy', 'hybrid', 'postcopy']);
  assert.deepEqual(avail({ ...all, lazyRestore: { ok: false, detail: 'no uffd events' } }), ['stop-copy', 'precopy']);
  assert.deepEqual(avail({ ...all, lazyDump: { ok: false, detail: 'pipes' } }), ['stop-copy']);
  assert.deepEqual(avail({ ...all, dirtyTracking: { ok: false, detail: 'Linux 6.1' } }), ['stop-copy', 'postcopy'], 'postcopy tracks nothing');
  const none = judgeModes({ ...all, criu: { ok: false, detail: 'no CRIU binary found' } });
  for (const m of MODES) assert.match(none[m].why, /CRIU: no CRIU binary found/, m);
  assert.match(judgeModes({ ...all, dirtyTracking: { ok: false, detail: 'Linux 6.1' } }).hybrid.why, /dirty-page tracking: Linux 6\.1/);
  for (const m of MODES) assert.ok(isMode(m));
  assert.equal(isMode('postcopy'), true);
  // Postcopy only when asked for: it alone loses the workload if the link fails mid-fill.
  assert.deepEqual([...AUTO_ORDER].sort(), MODES.filter((m) => m !== 'postcopy').sort(), 'auto picks every mode but postcopy');
  assert.equal(pickAuto(['stop-copy', 'precopy']), 'precopy');
  assert.equal(pickAuto([]), 'stop-copy');
});
