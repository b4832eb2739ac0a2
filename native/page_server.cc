#include "modules.h"

namespace phaul {
void InitPageServer(Napi::Env env, Napi::Object exports) {}
}  // namespace phaul
