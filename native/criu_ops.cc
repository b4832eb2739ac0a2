#include "modules.h"

namespace phaul {
void InitCriuOps(Napi::Env env, Napi::Object exports) {}
}  // namespace phaul
