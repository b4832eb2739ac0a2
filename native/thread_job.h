// The one idiom for long-lived native work (a page server, a relay: as long as
// a migration): a std::thread of its own, never one of libuv's pool threads
// (four by default, shared with page reads, lz4 and fs calls, which a job that
// lives for minutes would starve), and a promise settled on the JS thread when
// the work ends. Short jobs use async_job.h.
//
//   auto st = std::make_shared<State>();
//   Napi::Promise done = ThreadJob::Start(env, "phaul-relay",
//       [st] { ... on the thread: no N-API here; results into *st ... },
//       [st](Napi::Env env) -> Napi::Value { ... the result, or throw Napi::Error to reject ... });
//
// The pending promise keeps the event loop alive (through a thread-safe
// function) until the work has ended. Start() throws Napi::Error when no
// thread can be created; then work never runs.
#pragma once
#include <napi.h>

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>

namespace phaul {

class ThreadJob {
 public:
  using Work = std::function<void()>;
  using Done = std::function<Napi::Value(Napi::Env)>;

  static Napi::Promise Start(Napi::Env env, const char* name, Work work, Done done) {
    auto st = std::make_shared<Settle>(env, std::move(done));
    Napi::Promise promise = st->deferred.Promise();
    Napi::ThreadSafeFunction tsfn =
        Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}), name, 0, 1);
    try {
      std::thread([tsfn, st, work = std::move(work)]() mutable {
        work();
        // If the environment is already gone (the process is exiting) nobody
        // is left to tell; the shared_ptr keeps st valid either way.
        tsfn.BlockingCall([st](Napi::Env env, Napi::Function) {
          Napi::HandleScope scope(env);
          try {
            st->deferred.Resolve(st->done(env));
          } catch (const Napi::Error& e) {
            st->deferred.Reject(e.Value());
          }
        });
        tsfn.Release();
      }).detach();
    } catch (const std::system_error& e) {
      tsfn.Release();
      throw Napi::Error::New(env, std::string(name) + ": cannot start a thread: " + e.what());
    }
    return promise;
  }

 private:
  struct Settle {
    Settle(Napi::Env env, Done d) : deferred(Napi::Promise::Deferred::New(env)), done(std::move(d)) {}
    Napi::Promise::Deferred deferred;
    Done done;
  };
};

}  // namespace phaul
