#include "modules.h"

namespace phaul {
void InitDirtyTracker(Napi::Env env, Napi::Object exports) {}
}  // namespace phaul
