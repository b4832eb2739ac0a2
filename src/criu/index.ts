// Everything that drives CRIU goes through this module; nothing outside
// src/criu starts CRIU. Which of CRIU's three interfaces each call uses, and why:
//
//   libcriu (libcriu.ts, native/criu_ops.cc): check, version, and a plain dump
//     or restore: whatever a set of options and a result cover.
//   RPC, `criu swrk` (rpc.ts, native/criu_rpc.cc): what libcriu cannot hold
//     open across a decision made in JavaScript: the dump whose notify hooks
//     keep CRIU waiting at post-dump while the destination restores, a dump
//     into a page-server socket we own, and the restore the destination
//     resumes on "commit".
//   the CLI, only where CRIU offers nothing else: the lazy dump that takes a
//     page-server socket in lazy mode (lazy-dump.ts); and `phaul-fast check`,
//     which asks the binary itself (`criu --version`, `criu check --feature`)
//     so that it can report on CRIU without the addon.
//
// A restore's `criu swrk` may be started ahead (startCriu) and the lazy dump
// waits at a gate (gate.ts: its log file is a FIFO) until the switchover, so
// that CRIU's start-up is no part of the switchover; ensureKerndatCache (kerndat-cache.ts) makes CRIU's
// kernel probe a cache read where /run is not a tmpfs.
//
// The lazy-pages server of a hybrid restore (lazy-pages.ts) is ours, not
// CRIU's: it serves the restored tasks' userfaultfds that CRIU hands over.
//
// criuBinary() (binary.ts) says which CRIU all three use.
export { criuBinary } from './binary';
export {
  criuCheck, criuDump, criuRestore, criuVersion,
  type CgroupMode, type CriuCallOptions, type CriuCheckOptions, type CriuDumpOptions, type CriuFailure,
  type CriuRestoreOptions, type CriuVersion, type NetworkLock,
} from './libcriu';
export {
  criuLogTail, discardCriu, runCriu, runCriuOrThrow, startCriu,
  type CriuOpts, type CriuRequest, type CriuResult, type CriuSession, type NotifyHandler, type RunOptions,
} from './rpc';
export { ensureKerndatCache } from './kerndat-cache';
export { criuVersionCached } from './version-cache';
export { LazyDump, type DumpCpu, type LazyDumpOptions } from './lazy-dump';
export { LAZY_FILL_LOG, LazyPagesServer, type FillSource, type LazyPagesOptions } from './lazy-pages';
