#include "modules.h"

namespace phaul {
void InitCriuRpc(Napi::Env env, Napi::Object exports) {}
}  // namespace phaul
