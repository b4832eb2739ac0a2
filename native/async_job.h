// The one idiom for short jobs in native/: work() on libuv's thread pool, then
// a promise settled on the JS thread. For work that takes milliseconds to a
// few seconds; a job that lives as long as a migration gets a thread of its
// own instead, so it never holds one of the pool's (by default four) threads
// that page reads, lz4 and fs calls share.
//
//   auto st = std::make_shared<State>();
//   return AsyncJob::Run(env,
//       [st] { ... off the JS thread: no N-API here; results into *st ... },
//       [st](Napi::Env env) -> Napi::Value { ... the result, or throw Napi::Error to reject ... });
//
// keep: JS objects held until the promise settles (a buffer being filled, the
// wrapper whose native state the work uses). settle: runs on the JS thread
// after done, whatever the outcome (e.g. to free the wrapper for its next call).
#pragma once
#include <napi.h>

#include <functional>
#include <initializer_list>
#include <utility>
#include <vector>

namespace phaul {

class AsyncJob final : public Napi::AsyncWorker {
 public:
  using Work = std::function<void()>;
  using Done = std::function<Napi::Value(Napi::Env)>;
  using Settle = std::function<void()>;

  // Queues the job; the promise settles with done()'s value or its Napi::Error.
  static Napi::Promise Run(Napi::Env env, Work work, Done done, std::initializer_list<Napi::Object> keep = {},
                           Settle settle = nullptr) {
    auto* job = new AsyncJob(env, std::move(work), std::move(done), keep, std::move(settle));
    Napi::Promise p = job->deferred_.Promise();
    job->Queue();  // the worker deletes itself after OnOK/OnError
    return p;
  }

 private:
  AsyncJob(Napi::Env env, Work work, Done done, std::initializer_list<Napi::Object> keep, Settle settle)
      : Napi::AsyncWorker(env),
        deferred_(Napi::Promise::Deferred::New(env)),
        work_(std::move(work)),
        done_(std::move(done)),
        settle_(std::move(settle)) {
    for (const auto& o : keep) keep_.push_back(Napi::Persistent(o));
  }

  void Execute() override { work_(); }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    Release();
    Napi::Value v;
    try {
      v = done_(env);
    } catch (const Napi::Error& e) {
      if (settle_) settle_();
      deferred_.Reject(e.Value());
      return;
    }
    if (settle_) settle_();
    deferred_.Resolve(v);
  }

  // Only reached if Execute() itself failed through SetError; work_ reports
  // failures through its own state instead.
  void OnError(const Napi::Error& e) override {
    Release();
    if (settle_) settle_();
    deferred_.Reject(e.Value());
  }

  void Release() {
    for (auto& r : keep_) r.Reset();
  }

  Napi::Promise::Deferred deferred_;
  Work work_;
  Done done_;
  Settle settle_;
  std::vector<Napi::ObjectReference> keep_;
};

}  // namespace phaul
