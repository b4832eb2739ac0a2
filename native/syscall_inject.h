// Running a few system calls inside another process (ptrace), used to create a
// userfaultfd in the target's mm. Nothing here knows about dirty tracking.
//
// Safety model (docs/DESIGN.md section 3): while a borrowed thread runs with our
// registers, the death of its tracer kills or corrupts it. So the ptrace
// session never belongs to the Node process: RunDetached() runs it in a helper
// process (clone(CLONE_VM|CLONE_FILES|CLONE_VFORK), own session) that finishes
// and detaches even if Node is SIGKILLed. Between injected calls the target is
// parked in PTRACE_EVENT_STOP with its own registers, never in a signal stop.
//
// Everything a Session does is async-signal-safe (raw syscalls, no allocation),
// because it runs in that helper, which shares memory with a multi-threaded Node.
#pragma once
#include <stdint.h>
#include <sys/types.h>

#include <string>

#if defined(__x86_64__)
#include <sys/user.h>
#elif defined(__aarch64__)
#include <asm/ptrace.h>
#else
#error "syscall injection is implemented for x86_64 and aarch64 only"
#endif

namespace phaul {
namespace inject {

#if defined(__x86_64__)
using Regs = struct user_regs_struct;
constexpr unsigned kSyscallInsnLen = 2;  // 0f 05
#elif defined(__aarch64__)
using Regs = struct user_pt_regs;
constexpr unsigned kSyscallInsnLen = 4;  // svc #0 = d4000001
#endif

// Where a syscall instruction sits in the target and which thread to borrow.
struct Target {
  pid_t pid = 0;            // thread group id (as seen from our pid namespace)
  pid_t tid = 0;            // thread whose context runs the calls
  uint64_t syscall_ip = 0;  // address of a syscall instruction (in [vdso] when possible)
};

// Finds a live thread and a syscall instruction of `pid`. Runs in the caller
// (may allocate). Returns 0 or -errno with *err set.
int Prepare(pid_t pid, Target* t, std::string* err);

// One ptrace session on one thread. Use only from inside RunDetached's body
// (or a thread that will not die halfway): it is async-signal-safe.
class Session {
 public:
  explicit Session(const Target& t) : t_(t) {}
  // PTRACE_SEIZE + PTRACE_INTERRUPT and wait (<= timeout_ms) for the thread to
  // park in PTRACE_EVENT_STOP. 0 or -errno; *where names the failed step.
  int Attach(int timeout_ms);
  // Runs syscall `nr` in the borrowed thread and parks it again with its own
  // registers. Returns 0 (result in *ret, a raw kernel return: -errno on
  // failure) or -errno of the ptrace machinery.
  int Call(long nr, const long args[6], long* ret);
  // Detaches and re-sends the signals that arrived while we held the thread.
  void Detach();
  const char* where() const { return where_; }
  int64_t stopped_ns() const { return stopped_ns_; }

 private:
  int WaitStop(int* status, bool poll, int timeout_ms);
  int Park();
  void RememberSignal(int sig);

  Target t_;
  Regs saved_{};
  bool attached_ = false;
  const char* where_ = "";
  int pending_[8] = {0};  // signals to re-send after detach
  int npending_ = 0;
  int64_t t_attach_ = 0;
  int64_t stopped_ns_ = 0;  // how long the thread was held
};

// Runs body(arg) in a helper process that shares our memory and fd table
// but not our fate: it survives a SIGKILL of this process and of its process
// group. Blocks the calling thread until the helper exits. Returns body's
// result, or -errno if the helper could not be started.
int RunDetached(int (*body)(void*), void* arg);

// Injects one syscall into `pid` (test and diagnostic entry point).
int InjectOne(pid_t pid, long nr, const long args[6], long* ret, std::string* err, int64_t* ns);

int64_t NowNs();

// Test hook: hold the borrowed thread this long right after each injected
// syscall, in the single-step trap stop with our registers loaded (the
// dangerous window), so a test can kill the tracker inside it. 0 = off.
void SetTestHoldMs(int ms);

}  // namespace inject
}  // namespace phaul
