// The CRIU binary's version, asked of each binary once rather than by every agent.
//
// Why: criuVersion (libcriu.ts) starts `criu swrk`, i.e. a fork of the agent and
// an exec of CRIU, which loads its kernel-probe cache before it answers; every
// `phaul-fast migrate` asked at its handshake (localCapabilities), for 20-40 ms
// of CPU on the project's 2-core test VM (the agent's share and CRIU's), a
// tenth of the source's fixed cost per migration.
//
// The answer is a fact of the binary's file, so it is kept keyed by the file's
// identity: its real path, device, inode, size, and modification and change
// times in nanoseconds. Replacing or rewriting the binary in any way changes
// its change time (which no call can set back), so an entry never outlives the
// file it describes: another binary, or the same path rewritten, is asked
// again. Anything unreadable or malformed in the file counts as no entry.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { criuVersion, type CriuVersion } from './libcriu';

/** The identity of the file at `binary` (symbolic links followed). */
function identity(binary: string): string {
  const real = fs.realpathSync(binary);
  const st = fs.statSync(real, { bigint: true });
  return JSON.stringify([real, st.dev, st.ino, st.size, st.mtimeNs, st.ctimeNs].map(String));
}

const part = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 0 && (v as number) < 100;

function valid(v: unknown): v is CriuVersion {
  const c = v as CriuVersion;
  return !!c && part(c.minor) && part(c.sublevel) && Number.isInteger(c.major) && c.major >= 0 && c.major < 1000 &&
    c.code === c.major * 10000 + c.minor * 100 + c.sublevel;
}

/** What `cacheFile` says of the binary with this identity, if anything. */
function lookup(cacheFile: string, key: string): CriuVersion | undefined {
  try {
    const entry = JSON.parse(fs.readFileSync(cacheFile, 'utf8')) as { key?: unknown; version?: unknown };
    if (entry?.key === key && valid(entry.version)) return entry.version;
  } catch { /* none, or unreadable: ask */ }
  return undefined;
}

/**
 * criuVersion() of `binary`, from the file `cacheFile()` names when it holds
 * the answer for this very binary, else asked of CRIU and written there
 * (atomically; a cache that cannot be made or written only costs the next
 * agent the question). Fails as criuVersion does: nothing is kept of a binary
 * that does not answer.
 */
export async function criuVersionCached(binary: string, cacheFile: () => string): Promise<CriuVersion> {
  let key: string | undefined, file: string | undefined;
  try {
    key = identity(binary);
    file = cacheFile();
  } catch { /* no such binary (criuVersion says so), or no place for the cache */ }
  const known = key === undefined || file === undefined ? undefined : lookup(file, key);
  if (known) return known;
  const version = await criuVersion({ criuBinary: binary });
  if (key !== undefined && file !== undefined) {
    const cacheFile = file;
    const tmp = path.join(path.dirname(cacheFile), `.${path.basename(cacheFile)}.${process.pid}`);
    try {
      fs.writeFileSync(tmp, JSON.stringify({ key, version }), { mode: 0o600 });
      fs.renameSync(tmp, cacheFile);
    } catch {
      fs.rmSync(tmp, { force: true });
    }
  }
  return version;
}
