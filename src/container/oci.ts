// The parts of an OCI bundle's config.json (runtime-spec) a migration needs,
// read defensively: a config is user input on the source and network input on
// the destination.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PhaulError } from '../errors';

export interface OciMount {
  destination: string;
  type?: string;
  source?: string;
  options?: string[];
}

export interface OciNamespace {
  type?: string;
  path?: string;
}

/** config.json: what we read or rewrite is typed; the rest passes through untouched. */
export interface OciConfig {
  root: { path: string; readonly?: boolean };
  process?: { terminal?: boolean; args?: string[]; [k: string]: unknown };
  mounts?: OciMount[];
  annotations?: Record<string, string>;
  linux?: {
    namespaces?: OciNamespace[];
    maskedPaths?: unknown[];
    devices?: { path?: unknown }[];
    cgroupsPath?: unknown;
    resources?: Record<string, unknown>;
    [k: string]: unknown;
  };
  [k: string]: unknown;
}

export const MAX_CONFIG_BYTES = 4 << 20;

export function readOciConfig(bundle: string): OciConfig {
  const file = path.join(bundle, 'config.json');
  let text: string;
  try {
    if (fs.statSync(file).size > MAX_CONFIG_BYTES) throw new PhaulError('usage', `${file} is larger than ${MAX_CONFIG_BYTES} bytes`);
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if (e instanceof PhaulError) throw e;
    throw new PhaulError('notFound', `cannot read the container's ${file}`);
  }
  return parseOciConfig(text, file);
}

export function parseOciConfig(text: string, where: string): OciConfig {
  let c: unknown;
  try {
    c = JSON.parse(text);
  } catch {
    throw new PhaulError('protocol', `${where} is not JSON`);
  }
  if (!c || typeof c !== 'object' || Array.isArray(c)) throw new PhaulError('protocol', `${where} is not an OCI config object`);
  const cfg = c as OciConfig;
  if (!cfg.root || typeof cfg.root.path !== 'string' || cfg.root.path === '') throw new PhaulError('protocol', `${where} has no root.path`);
  for (const k of ['mounts'] as const) if (cfg[k] !== undefined && !Array.isArray(cfg[k])) throw new PhaulError('protocol', `${where}: ${k} is not a list`);
  if (cfg.linux !== undefined && (typeof cfg.linux !== 'object' || cfg.linux === null)) throw new PhaulError('protocol', `${where}: linux is not an object`);
  return cfg;
}

/** The rootfs as an absolute path (root.path may be relative to the bundle). */
export function rootfsOf(cfg: OciConfig, bundle: string): string {
  return path.resolve(bundle, cfg.root.path);
}

export function mountsOf(cfg: OciConfig): OciMount[] {
  const ms = Array.isArray(cfg.mounts) ? cfg.mounts : [];
  return ms.filter((m: unknown) => !!m && typeof (m as OciMount).destination === 'string');
}

/** runc turns every mount with a bind option into a bind mount, whatever its type says. */
export function isBindMount(m: OciMount): boolean {
  return m.type === 'bind' || (Array.isArray(m.options) && m.options.some((o) => o === 'bind' || o === 'rbind'));
}

export function maskedPathsOf(cfg: OciConfig): string[] {
  const p = cfg.linux?.maskedPaths;
  return Array.isArray(p) ? p.filter((x: unknown): x is string => typeof x === 'string') : [];
}

/** The devices runc creates in every container, then the config's own. */
export function devicePathsOf(cfg: OciConfig): string[] {
  const devices: unknown[] = Array.isArray(cfg.linux?.devices) ? cfg.linux.devices : [];
  const own = devices.map((d) => (d as { path?: unknown } | null)?.path).filter((p): p is string => typeof p === 'string');
  return ['/dev/null', '/dev/random', '/dev/full', '/dev/tty', '/dev/zero', '/dev/urandom', ...own];
}

/** The path of an existing namespace the container joins (e.g. a CNI-made netns), if any. */
export function namespacePath(cfg: OciConfig, type: string): string | undefined {
  const ns: OciNamespace[] = Array.isArray(cfg.linux?.namespaces) ? cfg.linux.namespaces : [];
  const hit = ns.find((n) => n?.type === type);
  return hit && typeof hit.path === 'string' && hit.path !== '' ? hit.path : undefined;
}

export function hasTerminal(cfg: OciConfig): boolean {
  return cfg.process?.terminal === true;
}
