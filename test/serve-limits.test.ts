// What an unauthenticated caller, a crowd of idle connections or an oversized
// session costs the destination agent, and the encrypted mode (TLS keyed by
// the token), against a real `phaul-fast serve` in a network namespace.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runIn, spawnIn } from '../src/testing/hosts';
import { MemWorkload, startMemWorkload } from '../src/testing/workload';
import { isAlive, procState, waitGone } from '../src/testing/proc';
import { runCli, startServe, useTwoHostsWithServe } from './helpers/agents';

const root = process.getuid?.() === 0;
const skip = root ? false : 'needs root (CRIU, network namespaces)';

const fx = useTwoHostsWithServe({ prefix: 'pflim', tag: 'limits', enabled: root });

function migrateArgs(pid: number, extra: string[] = [], port = fx.serve.port): string[] {
  return ['migrate', '--pid', String(pid), '--to', `${fx.hosts.b.addr}:${port}`, '--token-file', fx.token, '--json', ...extra];
}

function status(pid: number, field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m![1]) * 1024;
}

function openFds(pid: number): number {
  return fs.readdirSync(`/proc/${pid}/fd`).length;
}

async function expectUntouched(w: MemWorkload): Promise<void> {
  assert.ok(isAlive(w.pid), 'the original is alive');
  assert.notEqual(procState(w.pid), 'T', 'the original is not left stopped');
  assert.equal((await w.report()).ok, true, 'the original verifies all its memory');
}

test('an unauthenticated 64 MiB frame is cut off after its header: a few KiB read, no memory', { skip }, async () => {
  const pid = fx.serve.proc.pid!;
  const rssBefore = status(pid, 'VmRSS');
  // Announces a 64 MiB frame and tries to send it all; prints how much the agent took before closing.
  const code = `const s=require('net').connect(${fx.serve.port},'${fx.hosts.b.addr}');let sent=0;const t0=Date.now();` +
    `const h=Buffer.alloc(4);h.writeUInt32BE(64*1024*1024);const chunk=Buffer.alloc(1<<20,0x41);` +
    `s.on('connect',()=>{s.write(h);const more=()=>{while(sent<64*1024*1024){sent+=chunk.length;if(!s.write(chunk))return s.once('drain',more);}};more();});` +
    `s.on('error',()=>{});s.on('close',()=>{console.log(JSON.stringify({ms:Date.now()-t0,written:s.bytesWritten}));});`;
  const r = await runIn(fx.hosts.a, [process.execPath, '-e', code], { timeoutMs: 30_000 });
  const res = JSON.parse(r.stdout.trim());
  const rssAfter = status(pid, 'VmRSS');
  process.stdout.write(`# 64 MiB unauthenticated frame: closed after ${res.ms} ms, ${res.written} bytes accepted by the kernel, ` +
    `serve RSS ${(rssBefore / 1048576).toFixed(1)} -> ${(rssAfter / 1048576).toFixed(1)} MiB\n`);
  // What the client's kernel took before the reset is socket buffers, not the agent's reads.
  assert.ok(res.written < 16 * 1024 * 1024, `the agent closed long before 64 MiB (${res.written} bytes)`);
  assert.ok(rssAfter - rssBefore < 8 * 1024 * 1024, `serve RSS grew ${rssAfter - rssBefore} bytes`);
  assert.match(fx.serve.stderr(), /sent a 67108864-byte frame \(limit 4096\)/);
});

test('1000 idle connections neither exhaust the agent nor stop a migration', { skip }, async () => {
  const pid = fx.serve.proc.pid!;
  const fdsBefore = openFds(pid);
  // Holds 1000 connections open (from the source's own address), sending nothing.
  const code = `let open=0;const ss=[];for(let i=0;i<1000;i++){const s=require('net').connect(${fx.serve.port},'${fx.hosts.b.addr}');` +
    `s.on('connect',()=>{if(++open===1000)console.log('open')});s.on('error',()=>{});ss.push(s);}setTimeout(()=>process.exit(0),60000);`;
  const crowd = spawnIn(fx.hosts.a, ['bash', '-c', `ulimit -n 4096 && exec ${process.execPath} -e "${code}"`], { stdio: ['ignore', 'pipe', 'inherit'] });
  const w = await startMemWorkload({ mib: 32, writeMBps: 5, netns: fx.hosts.a.netnsPath! });
  let restored = 0;
  try {
    await new Promise<void>((resolve, reject) => {
      crowd.stdout!.on('data', (d) => { if (String(d).includes('open')) resolve(); });
      crowd.once('exit', () => reject(new Error('the crowd ended early')));
    });
    const fdsCrowded = openFds(pid);
    const r = await runCli(fx.hosts.a, migrateArgs(w.pid, ['--mode', 'stop-copy']));
    process.stdout.write(`# serve fds: ${fdsBefore} before, ${fdsCrowded} with 1000 idle connections\n`);
    assert.equal(r.code, 0, r.stderr);
    restored = r.json!.restoredPid;
    w.adopt(restored);
    assert.ok(fdsCrowded - fdsBefore <= 64 + 4, `the agent holds at most 64 pending connections (${fdsCrowded - fdsBefore} more fds)`);
    assert.ok(await waitGone(w.pid, 5000));
    assert.equal((await w.report(restored)).ok, true);
  } finally {
    crowd.kill('SIGKILL');
    await w.stop(restored);
  }
});

test('a session larger than the host-wide budget is refused up front (exit 11), nothing touched', { skip }, async () => {
  const tight = await startServe(fx.hosts.b, fx.token, path.join(fx.dir, 'dest-tight'), ['--max-store-bytes', String(8 << 20)]);
  const w = await startMemWorkload({ mib: 32, netns: fx.hosts.a.netnsPath! });
  try {
    for (const mode of ['stop-copy', 'precopy', 'postcopy']) {
      const r = await runCli(fx.hosts.a, migrateArgs(w.pid, ['--mode', mode], tight.port));
      assert.equal(r.code, 11, r.stderr);
      assert.equal(r.json?.error?.code, 'busy');
      assert.equal(r.json?.rolledBack, true);
      assert.match(r.stderr, /--max-store-bytes/);
      assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
      await expectUntouched(w);
    }
    assert.deepEqual(fs.readdirSync(tight.dir), [], 'no session directory was created');
  } finally {
    await tight.stop();
    await w.stop();
  }
});

test('--encrypt: TLS keyed by the token, no certificate; a plain client is refused', { skip }, async () => {
  const enc = await startServe(fx.hosts.b, fx.token, path.join(fx.dir, 'dest-enc'), ['--encrypt']);
  try {
    for (const mode of ['stop-copy', 'precopy', 'postcopy']) {
      const w = await startMemWorkload({ mib: 64, writeMBps: 10, netns: fx.hosts.a.netnsPath! });
      let restored = 0;
      try {
        if (mode === 'stop-copy') {
          const plain = await runCli(fx.hosts.a, migrateArgs(w.pid, ['--mode', mode], enc.port));
          assert.notEqual(plain.code, 0);
          assert.equal(plain.json?.rolledBack, true);
          await expectUntouched(w);
        }
        const r = await runCli(fx.hosts.a, migrateArgs(w.pid, ['--encrypt', '--mode', mode], enc.port));
        assert.equal(r.code, 0, `${mode}: ${r.stderr}`);
        assert.equal(r.json!.mode, mode);
        restored = r.json!.restoredPid;
        w.adopt(restored);
        assert.ok(await waitGone(w.pid, 5000));
        assert.equal((await w.report(restored)).ok, true, `${mode}: memory verified`);
      } finally {
        await w.stop(restored);
      }
    }
  } finally {
    await enc.stop();
  }
});
