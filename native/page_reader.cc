#include "modules.h"

namespace phaul {
void InitPageReader(Napi::Env env, Napi::Object exports) {}
}  // namespace phaul
