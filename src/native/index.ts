// The one loader of the C++ addon (build/Release/phaul_fast.node). Nothing loads
// the addon at import time: the first addon() call does, so `phaul-fast check`,
// `--help` and `require('phaul-fast')` work without it. When it cannot load,
// addon() throws PhaulError('unavailable') with one line saying what to run;
// addonStatus() reports the same without throwing.
//
// The addon's surface is typed here and nowhere else: one interface per native
// module, in the file of the same name (native/page_server.cc -> page-server.ts).
// To add a native module:
//   1. native/<name>.cc with `void Init<Name>(Napi::Env, Napi::Object exports)`,
//      declared in native/modules.h, called from native/addon.cc, listed in
//      binding.gyp's sources;
//   2. src/native/<name>.ts exporting `interface <Name>Native { ... }` with every
//      export, its arguments and what it resolves to;
//   3. add <Name>Native to Addon below; callers use `addon().<export>`.
// A call that blocks returns a promise, through one of two idioms: short jobs
// (a read, a scan, a wait) through native/async_job.h on libuv's pool; work
// that lasts as long as a migration (a page server, a relay, a fill, a CRIU
// call) through native/thread_job.h, on a thread of its own.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PhaulError } from '../errors';
import { PACKAGE_ROOT } from '../package-root';
import type { BatchIoNative } from './batch-io';
import type { CriuOpsNative } from './criu-ops';
import type { CriuRpcNative } from './criu-rpc';
import type { DirtyTrackerNative } from './dirty-tracker';
import type { LazyFillNative } from './lazy-fill';
import type { PageBufferNative } from './page-buffer';
import type { PageReaderNative } from './page-reader';
import type { PageServerNative } from './page-server';
import type { ProbeNative } from './probe';
import type { SocketOptsNative } from './socket-opts';
import type { SpliceRelayNative } from './splice-relay';
import type { TcpRepairNative } from './tcp-repair';

export interface Addon
  extends CriuOpsNative, CriuRpcNative, ProbeNative, SpliceRelayNative, PageServerNative, DirtyTrackerNative, PageReaderNative, PageBufferNative,
    LazyFillNative,
    BatchIoNative,
    SocketOptsNative,
    TcpRepairNative {}

/** Where the addon is: $PHAUL_FAST_ADDON (a prebuilt one), else the package's build/Release. */
export function addonPath(): string {
  return process.env.PHAUL_FAST_ADDON || path.join(PACKAGE_ROOT, 'build', 'Release', 'phaul_fast.node');
}

/** What to run to get a working addon, for the one-line messages. */
export const ADDON_FIX = 'run `npx phaul-fast setup` as root (in a checkout: npm run setup)';

let loaded: Addon | undefined;

/** Why a require() of the addon failed, as one line that ends with what to run. */
export function explainLoadFailure(file: string, err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  const first = msg.split('\n')[0] ?? msg;
  if (!fs.existsSync(file)) return `the native addon is not built (no ${file}): ${ADDON_FIX}`;
  const abi = /NODE_MODULE_VERSION (\d+)\. This version of Node\.js requires\s+NODE_MODULE_VERSION (\d+)/.exec(msg);
  if (abi) {
    return `the native addon was built for another Node.js (ABI ${abi[1]}; this Node ${process.version} needs ${abi[2]}): rebuild it: ${ADDON_FIX}`;
  }
  return `the native addon does not load (${first.replace(`${file}: `, '')}): ${ADDON_FIX}`;
}

/** The addon, loaded on first use. Throws PhaulError('unavailable') with what to run. */
export function addon(): Addon {
  if (loaded) return loaded;
  const file = addonPath();
  try {
    // The one untyped value: the addon's exports, typed by the interfaces above.
    loaded = require(file) as Addon;
  } catch (err) {
    throw new PhaulError('unavailable', explainLoadFailure(file, err), { cause: err });
  }
  return loaded;
}

/** Whether the addon loads, without throwing. */
export function addonStatus(): { ok: true; path: string } | { ok: false; path: string; problem: string } {
  try {
    addon();
    return { ok: true, path: addonPath() };
  } catch (err) {
    return { ok: false, path: addonPath(), problem: err instanceof Error ? err.message : String(err) };
  }
}

export type * from './batch-io';
export type * from './criu-ops';
export type * from './criu-rpc';
export type * from './dirty-tracker';
export type * from './lazy-fill';
export type * from './page-reader';
export type * from './page-server';
export type * from './probe';
export type * from './splice-relay';
