// lz4-napi, loaded at its first use rather than when the data path's modules
// are: loading it (its musl probe reads files, then a 0.8 MB native library)
// cost 10-15 ms of CPU on the project's 2-core test VM, and a migration with
// --compress none, an agent that only receives raw batches, or `--help`
// never needs it.
import type * as Lz4 from 'lz4-napi';

let loaded: typeof Lz4 | undefined;

export function lz4(): typeof Lz4 {
  loaded ??= require('lz4-napi') as typeof Lz4;
  return loaded;
}
