// One Init function per native concern; addon.cc calls them all.
#pragma once
#include <napi.h>

namespace phaul {
void InitCriuOps(Napi::Env env, Napi::Object exports);      // criu_ops.cc: libcriu check/dump/restore
void InitCriuRpc(Napi::Env env, Napi::Object exports);      // criu_rpc.cc: CRIU swrk RPC for options libcriu lacks
void InitProbe(Napi::Env env, Napi::Object exports);        // probe.cc: kernel feature probes
void InitSpliceRelay(Napi::Env env, Napi::Object exports);  // splice_relay.cc: CRIU <-> TCP zero-copy relay
void InitPageServer(Napi::Env env, Napi::Object exports);   // page_server.cc: CRIU-compatible page server
void InitDirtyTracker(Napi::Env env,
                      Napi::Object exports);               // dirty_tracker_binding.cc: uffd-wp + PAGEMAP_SCAN tracking
void InitPageReader(Napi::Env env, Napi::Object exports);  // page_reader.cc: reading pages of another process
void InitPageBuffer(Napi::Env env, Napi::Object exports);  // page_buffer.cc: long-lived page buffers in huge pages
void InitLazyFill(Napi::Env env, Napi::Object exports);   // lazy_fill_napi.cc: our lazy-pages server (userfaultfd fill)
void InitBatchIo(Napi::Env env, Napi::Object exports);    // batch_io.cc: pre-copy page batches, socket <-> memory
void InitTcpRepair(Napi::Env env, Napi::Object exports);  // tcp_repair.cc: a process's TCP sockets out of repair mode
void InitSocketOpts(Napi::Env env,
                    Napi::Object exports);  // socket_opts.cc: socket options Node lacks (TCP_USER_TIMEOUT)
}  // namespace phaul
