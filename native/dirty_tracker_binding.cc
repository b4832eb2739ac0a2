// The N-API binding of the dirty tracker (dirty_tracker.h): the DirtyTracker
// class, injectSyscall, dirtyTrackingSupport, sameMm and the flag constants.
// Typed for TypeScript in src/native/dirty-tracker.ts.
#include <errno.h>
#include <linux/kcmp.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <mutex>

#include "async_job.h"
#include "dirty_tracker.h"
#include "modules.h"
#include "probe.h"
#include "syscall_inject.h"

namespace phaul {

namespace {
using dirty::Failure;

Napi::Value BigArray(Napi::Env env, const std::vector<uint64_t>& v) {
  auto ab = Napi::ArrayBuffer::New(env, v.size() * 8);
  if (!v.empty()) memcpy(ab.Data(), v.data(), v.size() * 8);
  return Napi::TypedArrayOf<uint64_t>::New(env, v.size(), ab, 0, napi_biguint64_array);
}

Napi::Error MakeError(Napi::Env env, const Failure& f) {
  Napi::Error e = Napi::Error::New(env, f.message);
  e.Set("reason", Napi::String::New(env, f.code));
  e.Set("errno", Napi::Number::New(env, f.err));
  return e;
}

// What a tracker call's work() leaves for its done(), on the JS thread.
struct Outcome {
  bool ok = false;
  Failure f;
};

class DirtyTrackerWrap : public Napi::ObjectWrap<DirtyTrackerWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(
        env, "DirtyTracker",
        {InstanceMethod("start", &DirtyTrackerWrap::Start), InstanceMethod("scan", &DirtyTrackerWrap::Scan),
         InstanceMethod("present", &DirtyTrackerWrap::Present),
         InstanceMethod("unprotect", &DirtyTrackerWrap::Unprotect), InstanceMethod("vmas", &DirtyTrackerWrap::Vmas),
         InstanceMethod("stats", &DirtyTrackerWrap::Stats), InstanceMethod("close", &DirtyTrackerWrap::Close)});
  }

  explicit DirtyTrackerWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DirtyTrackerWrap>(info) {
    if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), "DirtyTracker(pid: number)");
    int pid = info[0].As<Napi::Number>().Int32Value();
    if (pid <= 0) throw Napi::TypeError::New(info.Env(), "pid must be > 0");
    t_ = std::make_unique<dirty::Tracker>(pid);
  }

 private:
  // One operation at a time: the core is not thread-safe and the JS caller
  // must await each call. close() waits for a running one (bounded: ms).
  bool Busy(Napi::Env env) {
    bool expected = false;
    return !busy_.compare_exchange_strong(expected, true);
  }

  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (Busy(env)) throw Napi::Error::New(env, "DirtyTracker: another operation is running");
    auto st = std::make_shared<Outcome>();
    return AsyncJob::Run(
        env,
        [this, st] {
          std::lock_guard<std::mutex> g(mu_);
          st->ok = t_->Start(&st->f);
        },
        [this, st](Napi::Env env) -> Napi::Value {
          if (!st->ok) throw MakeError(env, st->f);
          auto o = Napi::Object::New(env);
          const auto& s = t_->stats();
          o.Set("injectNs", Napi::Number::New(env, double(s.inject_ns)));
          o.Set("startNs", Napi::Number::New(env, double(s.start_ns)));
          o.Set("features", Napi::Number::New(env, double(s.features)));
          o.Set("userModeOnly", Napi::Boolean::New(env, s.user_mode_only));
          o.Set("tid", Napi::Number::New(env, s.borrowed_tid));
          o.Set("vmas", Napi::Number::New(env, double(t_->vmas().size())));
          return o;
        },
        {info.This().As<Napi::Object>()}, [this] { busy_ = false; });
  }

  Napi::Value Scan(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (Busy(env)) throw Napi::Error::New(env, "DirtyTracker: another operation is running");
    bool protect = info.Length() < 1 || info[0].IsUndefined() || info[0].ToBoolean().Value();
    bool sync = info.Length() < 2 || info[1].IsUndefined() || info[1].ToBoolean().Value();
    auto res = std::make_shared<dirty::ScanResult>();
    auto st = std::make_shared<Outcome>();
    return AsyncJob::Run(
        env,
        [this, st, res, protect, sync] {
          std::lock_guard<std::mutex> g(mu_);
          st->ok = t_->Scan(res.get(), &st->f, protect, sync);
        },
        [st, res](Napi::Env env) -> Napi::Value {
          if (!st->ok) throw MakeError(env, st->f);
          auto o = Napi::Object::New(env);
          o.Set("ranges", BigArray(env, res->ranges));
          o.Set("newVmas", BigArray(env, res->new_vmas));
          o.Set("vanished", BigArray(env, res->vanished));
          o.Set("shared", BigArray(env, res->shared));
          o.Set("untracked", BigArray(env, res->untracked));
          o.Set("pages", Napi::Number::New(env, double(res->pages)));
          o.Set("zeroPages", Napi::Number::New(env, double(res->zero_pages)));
          o.Set("trackedBytes", Napi::Number::New(env, double(res->tracked_bytes)));
          o.Set("mapsNs", Napi::Number::New(env, double(res->maps_ns)));
          o.Set("scanNs", Napi::Number::New(env, double(res->scan_ns)));
          o.Set("totalNs", Napi::Number::New(env, double(res->total_ns)));
          o.Set("ioctls", Napi::Number::New(env, res->ioctls));
          o.Set("retries", Napi::Number::New(env, res->retries));
          o.Set("first", Napi::Boolean::New(env, res->first));
          return o;
        },
        {info.This().As<Napi::Object>()}, [this] { busy_ = false; });
  }

  // present(start: bigint, end: bigint): BigUint64Array triples. Synchronous:
  // meant for the few untracked/shared ranges at switchover.
  Napi::Value Present(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    bool lossless;
    if (info.Length() < 2 || !info[0].IsBigInt() || !info[1].IsBigInt())
      throw Napi::TypeError::New(env, "present(start: bigint, end: bigint)");
    uint64_t s = info[0].As<Napi::BigInt>().Uint64Value(&lossless);
    uint64_t e = info[1].As<Napi::BigInt>().Uint64Value(&lossless);
    std::lock_guard<std::mutex> g(mu_);
    std::vector<uint64_t> out;
    Failure f;
    if (!t_->Present(s, e, &out, &f)) throw MakeError(env, f);
    return BigArray(env, out);
  }

  // unprotect(pairs: BigUint64Array): number of bytes. Synchronous: one ioctl
  // per tracked range the pairs touch, meant for the switchover.
  Napi::Value Unprotect(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsTypedArray() ||
        info[0].As<Napi::TypedArray>().TypedArrayType() != napi_biguint64_array)
      throw Napi::TypeError::New(env, "unprotect(pairs: BigUint64Array)");
    auto arr = info[0].As<Napi::TypedArrayOf<uint64_t>>();
    std::vector<uint64_t> pairs(arr.Data(), arr.Data() + arr.ElementLength());
    if (Busy(env)) throw Napi::Error::New(env, "DirtyTracker: another operation is running");
    uint64_t bytes = 0;
    Failure f;
    bool ok;
    {
      std::lock_guard<std::mutex> g(mu_);
      ok = t_->Unprotect(pairs, &bytes, &f);
    }
    busy_ = false;
    if (!ok) throw MakeError(env, f);
    return Napi::Number::New(env, double(bytes));
  }

  // vmas(): { ranges: BigUint64Array [start,end,flags] triples, names: string[] }
  Napi::Value Vmas(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::lock_guard<std::mutex> g(mu_);
    std::vector<uint64_t> r;
    auto names = Napi::Array::New(env);
    uint32_t i = 0;
    for (auto& v : t_->vmas()) {
      r.push_back(v.start);
      r.push_back(v.end);
      r.push_back(v.flags);
      names.Set(i++, Napi::String::New(env, v.name));
    }
    auto o = Napi::Object::New(env);
    o.Set("ranges", BigArray(env, r));
    o.Set("names", names);
    return o;
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::lock_guard<std::mutex> g(mu_);
    const auto& s = t_->stats();
    auto o = Napi::Object::New(env);
    o.Set("pid", Napi::Number::New(env, t_->pid()));
    o.Set("active", Napi::Boolean::New(env, t_->started()));
    o.Set("rounds", Napi::Number::New(env, double(s.rounds)));
    o.Set("pagesReported", Napi::Number::New(env, double(s.pages_reported)));
    o.Set("lastScanNs", Napi::Number::New(env, double(s.last_scan_ns)));
    o.Set("injectNs", Napi::Number::New(env, double(s.inject_ns)));
    o.Set("startNs", Napi::Number::New(env, double(s.start_ns)));
    o.Set("registrations", Napi::Number::New(env, double(s.registrations)));
    o.Set("epermRetries", Napi::Number::New(env, double(s.eperm_retries)));
    o.Set("features", Napi::Number::New(env, double(s.features)));
    o.Set("userModeOnly", Napi::Boolean::New(env, s.user_mode_only));
    return o;
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    std::lock_guard<std::mutex> g(mu_);
    t_->Close();
    return info.Env().Undefined();
  }

  std::unique_ptr<dirty::Tracker> t_;
  std::mutex mu_;
  std::atomic<bool> busy_{false};
};

// injectSyscall(pid, nr, args?: number[]): { ret: number, ns: number }
// Diagnostic/test entry point; blocks for the duration of the injection.
Napi::Value InjectSyscall(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber())
    throw Napi::TypeError::New(env, "injectSyscall(pid: number, nr: number, args?: number[])");
  long args[6] = {0};
  if (info.Length() > 2 && info[2].IsArray()) {
    auto a = info[2].As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length() && i < 6; i++) args[i] = long(a.Get(i).As<Napi::Number>().Int64Value());
  }
  long ret = 0;
  int64_t ns = 0;
  std::string err;
  int r = inject::InjectOne(info[0].As<Napi::Number>().Int32Value(), info[1].As<Napi::Number>().Int64Value(), args,
                            &ret, &err, &ns);
  if (r < 0) {
    Failure f;
    f.code = r == -ESRCH ? "process-gone" : (r == -EPERM ? "ptrace-denied" : "failed");
    f.message = err;
    f.err = -r;
    throw MakeError(env, f);
  }
  auto o = Napi::Object::New(env);
  o.Set("ret", Napi::Number::New(env, double(ret)));
  o.Set("ns", Napi::Number::New(env, double(ns)));
  return o;
}

// dirtyTrackingSupport(): { ok, features, reason }
Napi::Value Support(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const probe::TrackerSupport& s = probe::DirtyTrackingSupport();
  auto o = Napi::Object::New(env);
  o.Set("ok", Napi::Boolean::New(env, s.ok));
  o.Set("features", Napi::Number::New(env, double(s.features)));
  o.Set("reason", Napi::String::New(env, s.reason));
  return o;
}

// sameMm(pid1, pid2): do two processes share one mm (vfork, CLONE_VM)? Then
// one tracker covers both, and a second would fail with EBUSY.
Napi::Value SameMm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber())
    throw Napi::TypeError::New(env, "sameMm(pid1: number, pid2: number)");
  long r = syscall(SYS_kcmp, info[0].As<Napi::Number>().Int32Value(), info[1].As<Napi::Number>().Int32Value(), KCMP_VM,
                   0, 0);
  if (r < 0) {
    Failure f{errno == ESRCH ? "process-gone" : "failed", std::string("kcmp: ") + strerror(errno), errno};
    throw MakeError(env, f);
  }
  return Napi::Boolean::New(env, r == 0);
}
}  // namespace

void InitDirtyTracker(Napi::Env env, Napi::Object exports) {
  exports.Set("DirtyTracker", DirtyTrackerWrap::Define(env));
  exports.Set("injectSyscall", Napi::Function::New(env, InjectSyscall, "injectSyscall"));
  exports.Set("dirtyTrackingSupport", Napi::Function::New(env, Support, "dirtyTrackingSupport"));
  exports.Set("sameMm", Napi::Function::New(env, SameMm, "sameMm"));
  auto c = Napi::Object::New(env);
  c.Set("RANGE_PRESENT", Napi::Number::New(env, dirty::kRangePresent));
  c.Set("RANGE_SWAPPED", Napi::Number::New(env, dirty::kRangeSwapped));
  c.Set("RANGE_ZERO", Napi::Number::New(env, dirty::kRangeZero));
  c.Set("VMA_READ", Napi::Number::New(env, dirty::kVmaRead));
  c.Set("VMA_WRITE", Napi::Number::New(env, dirty::kVmaWrite));
  c.Set("VMA_EXEC", Napi::Number::New(env, dirty::kVmaExec));
  c.Set("VMA_SHARED", Napi::Number::New(env, dirty::kVmaShared));
  c.Set("VMA_FILE", Napi::Number::New(env, dirty::kVmaFile));
  c.Set("VMA_SPECIAL", Napi::Number::New(env, dirty::kVmaSpecial));
  c.Set("VMA_TRACKED", Napi::Number::New(env, dirty::kVmaTracked));
  exports.Set("dirtyConstants", c);
}

}  // namespace phaul
