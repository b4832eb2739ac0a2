// N-API binding of the lazy-pages server (lazy_fill.h):
//   lazyFillListen(path) -> fd
//   lazyFillServe({listenFd, files, images: [{id, extents: Float64Array of (start, end, file, off)...}],
//                  threads?, chunkBytes?, sliceBytes?, faultBytes?, punch?, connectTimeoutMs?, controlFd?}) ->
//                  Promise<stats>
// Serving runs on its own threads; the promise settles when every page is in
// place, or rejects with what stopped it.
#include <napi.h>

#include <algorithm>
#include <memory>

#include "lazy_fill.h"
#include "modules.h"
#include "thread_job.h"

namespace phaul {
namespace {

using lazyfill::Options;
using lazyfill::Stats;

// What the serving thread leaves for the JS thread.
struct Served {
  bool ok = false;
  Stats st;
  std::string err;
};

// The promise's value (src/native/lazy-fill.ts FillStats), or its rejection.
Napi::Value Result(Napi::Env env, Served& s) {
  if (!s.ok) {
    Napi::Error e = Napi::Error::New(env, s.err);
    // 'restore': it failed before the restore finished (no tree ran on it).
    e.Set("reason", Napi::String::New(env, s.st.restored ? "failed" : "restore"));
    throw e;
  }
  const Stats& st_ = s.st;
  Napi::Object r = Napi::Object::New(env);
  auto num = [&](const char* k, double v) { r.Set(k, Napi::Number::New(env, v)); };
  num("tasks", st_.tasks);
  num("zombies", st_.zombies);
  num("forks", st_.forks);
  num("exits", st_.exits);
  num("pages", double(st_.pages));
  num("copiedPages", double(st_.copied_pages));
  num("faultPages", double(st_.fault_pages));
  num("faults", double(st_.faults));
  num("zeroFaults", double(st_.zero_faults));
  num("droppedPages", double(st_.dropped_pages));
  num("punchedBytes", double(st_.punched_bytes));
  num("copies", double(st_.copies));
  num("retries", double(st_.retries));
  num("restoreMs", double(st_.restore_ms));
  num("fillMs", double(st_.fill_ms));
  num("batches", double(st_.batches));
  num("gateWaitUsTotal", double(st_.gate_us_total));
  num("gateWaitUsMax", double(st_.gate_us_max));
  num("joinedFaults", double(st_.joined_faults));
  num("waitedFaults", double(st_.waited_faults));
  num("needs", double(st_.needs));
  num("restoreNeeds", double(st_.restore_needs));
  num("presentBytes", double(st_.present_bytes));
  std::vector<uint32_t>& us = s.st.fault_us;
  std::sort(us.begin(), us.end());
  auto pct = [&](double q) { return us.empty() ? 0.0 : double(us[std::min(us.size() - 1, size_t(q * us.size()))]); };
  Napi::Object lat = Napi::Object::New(env);
  lat.Set("count", Napi::Number::New(env, double(us.size())));
  lat.Set("p50", Napi::Number::New(env, pct(0.5)));
  lat.Set("p99", Napi::Number::New(env, pct(0.99)));
  lat.Set("max", Napi::Number::New(env, us.empty() ? 0.0 : double(us.back())));
  r.Set("faultUs", lat);
  if (s.st.trace_reads.size() + s.st.trace_faults.size() + s.st.trace_slices.size() + s.st.trace_punches.size()) {
    // Flat arrays of numbers, a record after another (FillTrace in src/native/lazy-fill.ts).
    Napi::Object tr = Napi::Object::New(env);
    auto flat = [&](const char* k, size_t n, size_t w, auto at) {
      Napi::Float64Array a = Napi::Float64Array::New(env, n * w);
      for (size_t i = 0; i < n; i++) at(i, &a[i * w]);
      tr.Set(k, a);
    };
    flat("faults", s.st.trace_faults.size(), 6, [&](size_t i, double* o) {
      const auto& f = s.st.trace_faults[i];
      o[0] = double(f.seen), o[1] = f.us, o[2] = f.kind, o[3] = double(f.bytes), o[4] = f.copy_us, o[5] = f.tail_us;
    });
    flat("reads", s.st.trace_reads.size(), 3, [&](size_t i, double* o) {
      const auto& f = s.st.trace_reads[i];
      o[0] = double(f.at), o[1] = f.gate_us, o[2] = f.msgs;
    });
    flat("slices", s.st.trace_slices.size(), 3, [&](size_t i, double* o) {
      const auto& f = s.st.trace_slices[i];
      o[0] = double(f.at), o[1] = f.us, o[2] = f.bytes;
    });
    flat("punches", s.st.trace_punches.size(), 3, [&](size_t i, double* o) {
      const auto& f = s.st.trace_punches[i];
      o[0] = double(f.at), o[1] = f.us, o[2] = f.bytes;
    });
    r.Set("trace", tr);
  }
  return r;
}

Napi::Value Listen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "lazyFillListen(path: string)");
  std::string err;
  int fd = lazyfill::Listen(info[0].As<Napi::String>().Utf8Value(), &err);
  if (fd < 0) throw Napi::Error::New(env, err);
  return Napi::Number::New(env, fd);
}

double Opt(Napi::Object o, const char* k, double def) {
  Napi::Value v = o.Get(k);
  return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : def;
}

Napi::Value Serve(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "lazyFillServe(options)");
  Napi::Object a = info[0].As<Napi::Object>();
  auto o = std::make_unique<Options>();
  o->listen_fd = int(Opt(a, "listenFd", -1));
  if (o->listen_fd < 0) throw Napi::TypeError::New(env, "lazyFillServe: listenFd");
  o->threads = std::max(1, std::min(16, int(Opt(a, "threads", 2))));
  o->chunk_bytes = uint64_t(Opt(a, "chunkBytes", 1 << 20)) & ~uint64_t(4095);
  uint64_t fb = uint64_t(Opt(a, "faultBytes", 64 << 10));
  o->fault_bytes = 4096;
  while (o->fault_bytes < fb && o->fault_bytes < (4u << 20)) o->fault_bytes <<= 1;  // a power of two
  if (o->chunk_bytes < 4096) o->chunk_bytes = 4096;
  o->slice_bytes = uint64_t(Opt(a, "sliceBytes", double(256 << 10))) & ~uint64_t(4095);
  o->slice_bytes = std::max<uint64_t>(4096, std::min<uint64_t>(o->slice_bytes, 16 << 20));
  o->connect_timeout_ms = int(Opt(a, "connectTimeoutMs", 600000));
  o->control_fd = int(Opt(a, "controlFd", -1));
  Napi::Value trace = a.Get("trace");
  o->trace = trace.IsBoolean() && trace.As<Napi::Boolean>().Value();
  Napi::Value punch = a.Get("punch");
  o->punch = !punch.IsBoolean() || punch.As<Napi::Boolean>().Value();
  Napi::Value files = a.Get("files");
  if (!files.IsArray()) throw Napi::TypeError::New(env, "lazyFillServe: files must be an array of paths");
  Napi::Array fa = files.As<Napi::Array>();
  for (uint32_t i = 0; i < fa.Length(); i++) o->files.push_back(fa.Get(i).As<Napi::String>().Utf8Value());
  Napi::Value images = a.Get("images");
  if (!images.IsArray()) throw Napi::TypeError::New(env, "lazyFillServe: images must be an array");
  Napi::Array ia = images.As<Napi::Array>();
  for (uint32_t i = 0; i < ia.Length(); i++) {
    Napi::Object im = ia.Get(i).As<Napi::Object>();
    lazyfill::Image img;
    img.id = int32_t(Opt(im, "id", 0));
    Napi::Value ev = im.Get("extents");
    if (!ev.IsTypedArray() || ev.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
      throw Napi::TypeError::New(env, "lazyFillServe: extents must be a Float64Array");
    Napi::Float64Array ex = ev.As<Napi::Float64Array>();
    if (ex.ElementLength() % 4) throw Napi::TypeError::New(env, "lazyFillServe: extents come in fours");
    for (size_t k = 0; k + 3 < ex.ElementLength(); k += 4)
      img.extents.push_back({uint64_t(ex[k]), uint64_t(ex[k + 1]), uint32_t(ex[k + 2]), uint64_t(ex[k + 3])});
    o->images.push_back(std::move(img));
  }
  // Serving lasts until every page is in place: a thread of its own (thread_job.h).
  std::shared_ptr<Options> opts(std::move(o));
  auto out = std::make_shared<Served>();
  return ThreadJob::Start(
      env, "phaul-lazy-fill", [opts, out] { out->ok = lazyfill::Serve(*opts, &out->st, &out->err); },
      [out](Napi::Env env) { return Result(env, *out); });
}

}  // namespace

void InitLazyFill(Napi::Env env, Napi::Object exports) {
  exports.Set("lazyFillListen", Napi::Function::New(env, Listen, "lazyFillListen"));
  exports.Set("lazyFillServe", Napi::Function::New(env, Serve, "lazyFillServe"));
}

}  // namespace phaul
