#include "modules.h"

namespace phaul {
void InitProbe(Napi::Env env, Napi::Object exports) {}
}  // namespace phaul
