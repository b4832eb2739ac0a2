// Long-lived page buffers (the data path's read and receive buffers) in
// memory of their own, backed by transparent huge pages where the kernel
// offers them, and touched once here.
//
// Why: on the virtual machines this project runs on, the first touch of a
// page of fresh memory is a page fault the hypervisor takes part in, several
// times the cost of the copy that fills it. A pre-copy agent's buffers (tens of
// MiB) cost ~0.1 s of CPU to touch in 4 KiB pages; in 2 MiB pages (one fault
// each) ~0.01 s (docs/BENCH.md, "where the CPU goes"). Without THP
// (transparent_hugepage=never) the buffer is what it was: 4 KiB pages.
//
//   allocPageBuffer(size) -> Buffer   // zero-filled; unmapped when collected
#include <string.h>
#include <sys/mman.h>

#include "modules.h"

namespace phaul {
namespace {

const size_t kHuge = 2u << 20;
// A bound on a single buffer: the data path's are 4 or 16 MiB.
const double kMaxBuffer = double(1u << 30);

struct Mapping {
  void* base;
  size_t len;
};

// size bytes at a 2 MiB boundary (the only place a huge page can go), or null.
uint8_t* MapAligned(size_t size, Mapping* m) {
  size_t len = size + kHuge;
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  uintptr_t start = (uintptr_t(p) + kHuge - 1) & ~uintptr_t(kHuge - 1);
  // Give back the slack before and after: the buffer keeps only its own pages.
  size_t head = start - uintptr_t(p), keep = (size + 4095) & ~size_t(4095);
  if (head) munmap(p, head);
  if (len - head > keep) munmap(reinterpret_cast<uint8_t*>(start) + keep, len - head - keep);
  m->base = reinterpret_cast<void*>(start);
  m->len = keep;
  return reinterpret_cast<uint8_t*>(start);
}

Napi::Value AllocPageBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "allocPageBuffer(size: number)");
  double want = info[0].As<Napi::Number>().DoubleValue();
  if (!(want >= 1 && want <= kMaxBuffer) || want != double(size_t(want)))
    throw Napi::RangeError::New(env, "allocPageBuffer: size must be an integer from 1 byte to 1 GiB");
  size_t size = size_t(want);
  auto* m = new Mapping();
  uint8_t* p = MapAligned(size, m);
  if (!p) {
    delete m;
    throw Napi::Error::New(env, "allocPageBuffer: out of memory");
  }
  // A hint: the kernel may decline (THP off, no huge page free); the buffer works either way.
  madvise(p, m->len, MADV_HUGEPAGE);
  // Not copied into children: the agent forks to start CRIU (and others), which
  // exec at once; without this each fork also mapped the 16-48 MiB of buffers
  // copy-on-write (~4 ms of CPU per spawn with two 16 MiB buffers, measured).
  madvise(p, m->len, MADV_DONTFORK);
  memset(p, 0, m->len);  // touched now, once
  return Napi::Buffer<uint8_t>::New(env, p, size, [m](Napi::Env, uint8_t*) {
    munmap(m->base, m->len);
    delete m;
  });
}

}  // namespace

void InitPageBuffer(Napi::Env env, Napi::Object exports) {
  exports.Set("allocPageBuffer", Napi::Function::New(env, AllocPageBuffer, "allocPageBuffer"));
}

}  // namespace phaul
