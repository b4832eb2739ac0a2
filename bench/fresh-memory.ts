// How long this machine takes to write `mib` MiB of fresh memory: the floor
// for any fill of that much (every page must be allocated and written once).
// Measured in a child process so the memory goes back when it exits; on a VM
// whose hypervisor takes free memory back this is much slower than a memcpy.
import { spawn } from 'node:child_process';

const CHILD = `
const mib = Number(process.argv[1]);
const keep = [];
const t0 = process.hrtime.bigint();
for (let left = mib; left > 0; left -= 64) {
  const b = Buffer.allocUnsafeSlow(Math.min(64, left) * 1048576);
  b.fill(1);
  keep.push(b);
}
process.stdout.write(String(Number(process.hrtime.bigint() - t0) / 1e6));
`;

/** Milliseconds to allocate and write `mib` MiB once, or NaN if it could not be measured. */
export function freshWriteMs(mib: number): Promise<number> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, ['-e', CHILD, String(mib)], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    c.stdout.on('data', (d) => { out += d; });
    c.on('error', () => resolve(NaN));
    c.on('close', (code) => resolve(code === 0 ? Number(out) : NaN));
  });
}
