// podman's record of a container (libpod's ContainerConfig, the JSON podman
// writes as config.dump into a checkpoint archive and restores a container
// from). podman 4.3 prints it nowhere; it keeps it in its bolt database
// (GRAPHROOT/libpod/bolt_state.db), where each value is stored whole and
// unencoded. The database is read, never written: we take every JSON object
// that starts like a ContainerConfig and names the container's id, and refuse
// when two versions disagree (bolt keeps old pages until reused).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PhaulError } from '../errors';

/** libpod's database is small; anything far larger is not one we should scan. */
const MAX_DB_BYTES = 256 << 20;
const MAX_CONFIG_CHARS = 4 << 20;
const START = '{"spec":';

/** The JSON object that starts at `from` in `text`, or undefined if it does not close (strings and escapes respected). */
function objectAt(text: string, from: number): string | undefined {
  let depth = 0;
  let inString = false;
  const end = Math.min(text.length, from + MAX_CONFIG_CHARS);
  for (let i = from; i < end; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++; // backslash: skip the escaped character
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x7b) depth++;
    else if (c === 0x7d && --depth === 0) return text.slice(from, i + 1);
  }
  return undefined;
}

/** Container `id`'s config as podman stored it, as JSON text. */
export function readLibpodConfig(graphRoot: string, id: string): string {
  const db = path.join(graphRoot, 'libpod', 'bolt_state.db');
  let buf: Buffer;
  try {
    if (fs.statSync(db).size > MAX_DB_BYTES) throw new PhaulError('unavailable', `podman's database ${db} is larger than ${MAX_DB_BYTES} bytes`);
    buf = fs.readFileSync(db);
  } catch (e) {
    if (e instanceof PhaulError) throw e;
    throw new PhaulError('unavailable', `cannot read podman's database ${db} (podman 4's bolt database is what this reads)`);
  }
  const text = buf.toString('latin1'); // one char per byte: offsets stay byte offsets
  // Normalized text -> the text as stored (numbers beyond 2^53 must pass through untouched).
  const found = new Map<string, string>();
  for (let at = text.indexOf(START); at >= 0; at = text.indexOf(START, at + 1)) {
    const obj = objectAt(text, at);
    if (!obj) continue;
    const raw = Buffer.from(obj, 'latin1').toString('utf8');
    let parsed: { id?: unknown };
    try {
      parsed = JSON.parse(raw);
    } catch {
      continue; // a stale, partly overwritten page
    }
    if (parsed.id === id) found.set(JSON.stringify(parsed), raw);
  }
  if (found.size === 0) throw new PhaulError('unavailable', `podman's database ${db} holds no config for container ${id}`);
  if (found.size > 1) throw new PhaulError('unavailable', `podman's database ${db} holds ${found.size} differing configs for container ${id}`);
  return [...found.values()][0];
}
