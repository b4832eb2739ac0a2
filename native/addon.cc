// Entry point of the phaul-fast addon. Each concern lives in its own file and
// registers its own exports; this file only wires them together.
#include <napi.h>

#include "modules.h"

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  phaul::InitCriuOps(env, exports);
  phaul::InitCriuRpc(env, exports);
  phaul::InitProbe(env, exports);
  phaul::InitSpliceRelay(env, exports);
  phaul::InitPageServer(env, exports);
  phaul::InitDirtyTracker(env, exports);
  phaul::InitPageReader(env, exports);
  phaul::InitPageBuffer(env, exports);
  phaul::InitLazyFill(env, exports);
  phaul::InitBatchIo(env, exports);
  phaul::InitSocketOpts(env, exports);
  phaul::InitTcpRepair(env, exports);
  return exports;
}

NODE_API_MODULE(phaul_fast, Init)
