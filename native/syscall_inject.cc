// Syscall injection with ptrace; see syscall_inject.h for the safety model.
// No N-API here, so the file cross-compiles on its own (aarch64 check).
#include "syscall_inject.h"

#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

namespace phaul {
namespace inject {

int64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// ---------------------------------------------------------------- arch
#if defined(__x86_64__)
static int GetRegs(pid_t tid, Regs* r) { return ptrace(PTRACE_GETREGS, tid, nullptr, r); }
static int SetRegs(pid_t tid, const Regs* r) { return ptrace(PTRACE_SETREGS, tid, nullptr, r); }
static uint64_t Pc(const Regs& r) { return r.rip; }
static long Retval(const Regs& r) { return long(r.rax); }
static void SetupCall(Regs* r, uint64_t ip, long nr, const long a[6]) {
  r->rip = ip;
  r->rax = uint64_t(nr);
  // orig_rax = -1: the kernel must not treat the stop as an interrupted
  // syscall to restart (that would rewind rip and clobber rax).
  r->orig_rax = uint64_t(-1);
  r->rdi = uint64_t(a[0]);
  r->rsi = uint64_t(a[1]);
  r->rdx = uint64_t(a[2]);
  r->r10 = uint64_t(a[3]);
  r->r8 = uint64_t(a[4]);
  r->r9 = uint64_t(a[5]);
}
// A 32-bit (ia32) task has no 64-bit syscall instruction in its vdso.
static bool ArchOk(const Regs& r) { return r.cs == 0x33; }
static bool IsSyscallInsn(const uint8_t* p, size_t avail) { return avail >= 2 && p[0] == 0x0f && p[1] == 0x05; }
static const size_t kInsnAlign = 1;
#elif defined(__aarch64__)
static int GetRegs(pid_t tid, Regs* r) {
  struct iovec iov = {r, sizeof(*r)};
  return ptrace(PTRACE_GETREGSET, tid, (void*)NT_PRSTATUS, &iov);
}
static int SetRegs(pid_t tid, const Regs* r) {
  struct iovec iov = {const_cast<Regs*>(r), sizeof(*r)};
  return ptrace(PTRACE_SETREGSET, tid, (void*)NT_PRSTATUS, &iov);
}
static uint64_t Pc(const Regs& r) { return r.pc; }
static long Retval(const Regs& r) { return long(r.regs[0]); }
static void SetupCall(Regs* r, uint64_t ip, long nr, const long a[6]) {
  // arm64 already undid syscall-restart state (forget_syscall) before the
  // task reached get_signal, so setting pc/x8/x0-x5 is enough.
  r->pc = ip;
  r->regs[8] = uint64_t(nr);
  for (int i = 0; i < 6; i++) r->regs[i] = uint64_t(a[i]);
}
// AArch32 tasks (PSR_MODE32_BIT) use a different syscall ABI.
static bool ArchOk(const Regs& r) { return (r.pstate & 0x10) == 0; }
static bool IsSyscallInsn(const uint8_t* p, size_t avail) {
  if (avail < 4) return false;
  uint32_t insn;
  memcpy(&insn, p, 4);
  return insn == 0xd4000001;  // svc #0
}
static const size_t kInsnAlign = 4;
#endif

// ---------------------------------------------------------------- Prepare
static bool ReadFile(const char* path, std::string* out) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  out->clear();
  char buf[65536];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out->append(buf, size_t(n));
  }
  close(fd);
  return true;
}

static bool ThreadAlive(pid_t pid, pid_t tid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/task/%d/stat", pid, tid);
  std::string s;
  if (!ReadFile(path, &s)) return false;
  size_t p = s.rfind(')');
  if (p == std::string::npos || p + 2 >= s.size()) return false;
  char st = s[p + 2];
  return st != 'Z' && st != 'X';
}

// Scans [start,end) of the target for a syscall instruction.
static uint64_t FindInsn(pid_t pid, uint64_t start, uint64_t end) {
  std::vector<uint8_t> buf(1 << 16);
  for (uint64_t a = start; a < end;) {
    size_t want = size_t(std::min<uint64_t>(buf.size(), end - a));
    struct iovec l = {buf.data(), want}, r = {(void*)a, want};
    ssize_t n = process_vm_readv(pid, &l, 1, &r, 1, 0);
    if (n <= 0) return 0;
    for (size_t i = 0; i + kSyscallInsnLen <= size_t(n); i += kInsnAlign)
      if (IsSyscallInsn(&buf[i], size_t(n) - i)) return a + i;
    // step back so an instruction straddling two chunks is not missed
    a += size_t(n) > kSyscallInsnLen ? size_t(n) - kSyscallInsnLen + kInsnAlign : size_t(n);
  }
  return 0;
}

int Prepare(pid_t pid, Target* t, std::string* err) {
  t->pid = pid;
  t->tid = 0;
  if (ThreadAlive(pid, pid)) {
    t->tid = pid;
  } else {
    // The leader can be a zombie while other threads run: borrow one of them.
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR* d = opendir(path);
    if (!d) {
      *err = "process " + std::to_string(pid) + " not found";
      return -ESRCH;
    }
    while (struct dirent* e = readdir(d)) {
      pid_t tid = atoi(e->d_name);
      if (tid > 0 && ThreadAlive(pid, tid)) {
        t->tid = tid;
        break;
      }
    }
    closedir(d);
  }
  if (!t->tid) {
    *err = "process " + std::to_string(pid) + " has no live thread";
    return -ESRCH;
  }

  char path[64];
  snprintf(path, sizeof path, "/proc/%d/maps", pid);
  std::string maps;
  if (!ReadFile(path, &maps)) {
    *err = "cannot read " + std::string(path);
    return -ESRCH;
  }
  // [vdso] first: it is always there (unless vdso=0) and tiny. Otherwise any
  // executable mapping: a syscall instruction in libc works as well.
  uint64_t found = 0;
  for (int pass = 0; pass < 2 && !found; pass++) {
    size_t pos = 0;
    while (pos < maps.size() && !found) {
      size_t eol = maps.find('\n', pos);
      if (eol == std::string::npos) eol = maps.size();
      std::string line = maps.substr(pos, eol - pos);
      pos = eol + 1;
      unsigned long long s, e;
      char perms[8] = {0};
      if (sscanf(line.c_str(), "%llx-%llx %7s", &s, &e, perms) != 3) continue;
      bool vdso = line.find("[vdso]") != std::string::npos;
      if (pass == 0 ? !vdso : (perms[2] != 'x' || perms[0] != 'r')) continue;
      found = FindInsn(pid, s, e);
    }
  }
  if (!found) {
    *err = "no syscall instruction found in the executable mappings of " + std::to_string(pid);
    return -ENOEXEC;
  }
  t->syscall_ip = found;
  return 0;
}

// ---------------------------------------------------------------- Session
static volatile int64_t g_test_hold_ns = 0;
void SetTestHoldMs(int ms) { g_test_hold_ns = int64_t(ms) * 1000000; }

int Session::WaitStop(int* status, bool poll, int timeout_ms) {
  int64_t deadline = NowNs() + int64_t(timeout_ms) * 1000000;
  int spins = 0;
  for (;;) {
    pid_t r = waitpid(t_.tid, status, __WALL | (poll ? WNOHANG : 0));
    if (r == t_.tid) {
      if (WIFEXITED(*status) || WIFSIGNALED(*status)) {
        attached_ = false;
        return -ESRCH;
      }
      return 0;
    }
    if (r < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    // r == 0: not stopped yet. Spin briefly (a running thread stops within
    // microseconds), then sleep so a thread stuck in D state costs no CPU.
    if (NowNs() > deadline) return -ETIMEDOUT;
    if (++spins < 200) {
      sched_yield();
    } else {
      struct timespec ts = {0, 50000};
      nanosleep(&ts, nullptr);
    }
  }
}

void Session::RememberSignal(int sig) {
  for (int i = 0; i < npending_; i++)
    if (pending_[i] == sig) return;  // standard signals do not queue anyway
  if (npending_ < int(sizeof pending_ / sizeof pending_[0])) pending_[npending_++] = sig;
}

int Session::Attach(int timeout_ms) {
  t_attach_ = NowNs();
  // A container's seccomp profile may forbid what we inject (podman's and
  // Docker's default ones deny userfaultfd): suspended while we trace, as
  // CRIU does. Only a tracer with CAP_SYS_ADMIN may; without, the filter stays.
  if (ptrace(PTRACE_SEIZE, t_.tid, nullptr, reinterpret_cast<void*>(uintptr_t(PTRACE_O_SUSPEND_SECCOMP))) < 0 &&
      (errno != EPERM || ptrace(PTRACE_SEIZE, t_.tid, nullptr, nullptr) < 0)) {
    where_ = "PTRACE_SEIZE";
    return -errno;
  }
  attached_ = true;
  if (ptrace(PTRACE_INTERRUPT, t_.tid, nullptr, nullptr) < 0) {
    where_ = "PTRACE_INTERRUPT";
    return -errno;
  }
  for (;;) {
    int st = 0;
    int r = WaitStop(&st, true, timeout_ms);
    if (r < 0) {
      where_ = r == -ETIMEDOUT ? "waiting for the thread to stop" : "waitpid";
      return r;
    }
    if ((st >> 16) == PTRACE_EVENT_STOP) break;
    // A signal-delivery-stop: hold the signal back and re-send it after detach.
    RememberSignal(WSTOPSIG(st));
    if (ptrace(PTRACE_CONT, t_.tid, nullptr, nullptr) < 0) {
      where_ = "PTRACE_CONT";
      return -errno;
    }
  }
  if (GetRegs(t_.tid, &saved_) < 0) {
    where_ = "get registers";
    return -errno;
  }
  if (!ArchOk(saved_)) {
    where_ = "architecture check (32-bit task)";
    return -ENOEXEC;
  }
  return 0;
}

// Back to PTRACE_EVENT_STOP with the thread's own registers: from a signal
// stop, PTRACE_INTERRUPT then PTRACE_CONT(sig 0) drops the stop's signal and
// traps in get_signal before any user code runs.
int Session::Park() {
  if (SetRegs(t_.tid, &saved_) < 0) {
    where_ = "restore registers";
    return -errno;
  }
  if (ptrace(PTRACE_INTERRUPT, t_.tid, nullptr, nullptr) < 0 || ptrace(PTRACE_CONT, t_.tid, nullptr, nullptr) < 0) {
    where_ = "park (PTRACE_INTERRUPT/CONT)";
    return -errno;
  }
  for (;;) {
    int st = 0;
    int r = WaitStop(&st, false, 0);
    if (r < 0) {
      where_ = "park (waitpid)";
      return r;
    }
    if ((st >> 16) == PTRACE_EVENT_STOP) return 0;
    RememberSignal(WSTOPSIG(st));
    if (ptrace(PTRACE_CONT, t_.tid, nullptr, nullptr) < 0) {
      where_ = "park (PTRACE_CONT)";
      return -errno;
    }
  }
}

int Session::Call(long nr, const long args[6], long* ret) {
  Regs r = saved_;
  SetupCall(&r, t_.syscall_ip, nr, args);
  if (SetRegs(t_.tid, &r) < 0) {
    where_ = "set registers";
    return -errno;
  }
  if (ptrace(PTRACE_SINGLESTEP, t_.tid, nullptr, nullptr) < 0) {
    where_ = "PTRACE_SINGLESTEP";
    int e = -errno;
    Park();
    return e;
  }
  const uint64_t after = t_.syscall_ip + kSyscallInsnLen;
  for (;;) {
    int st = 0;
    int w = WaitStop(&st, false, 0);
    if (w < 0) {
      where_ = "single-step (waitpid)";
      return w;
    }
    Regs cur;
    if (GetRegs(t_.tid, &cur) < 0) {
      where_ = "get registers after single-step";
      int e = -errno;
      Park();
      return e;
    }
    int event = st >> 16, sig = WSTOPSIG(st);
    if (event == 0 && sig == SIGTRAP && Pc(cur) == after) {
      // The single-step trap is dequeued before any other signal
      // (synchronous signals first), so the syscall ran exactly once.
      *ret = Retval(cur);
      if (g_test_hold_ns > 0) {
        struct timespec ts = {time_t(g_test_hold_ns / 1000000000), long(g_test_hold_ns % 1000000000)};
        nanosleep(&ts, nullptr);
      }
      break;
    }
    if (Pc(cur) == t_.syscall_ip) {
      // Stopped before the instruction ran (a signal or a group stop got in
      // first): hold the signal, step again.
      if (event == 0) RememberSignal(sig);
      if (ptrace(PTRACE_SINGLESTEP, t_.tid, nullptr, nullptr) < 0) {
        where_ = "PTRACE_SINGLESTEP (again)";
        int e = -errno;
        Park();
        return e;
      }
      continue;
    }
    where_ = "unexpected stop during single-step";
    Park();
    return -EIO;
  }
  return Park();
}

void Session::Detach() {
  if (attached_) {
    ptrace(PTRACE_DETACH, t_.tid, nullptr, nullptr);
    attached_ = false;
  }
  for (int i = 0; i < npending_; i++) syscall(SYS_tgkill, t_.pid, t_.tid, pending_[i]);
  npending_ = 0;
  stopped_ns_ = NowNs() - t_attach_;
}

// ---------------------------------------------------------------- RunDetached
namespace {
struct Trampoline {
  int (*body)(void*);
  void* arg;
  int result;
};

int TrampolineMain(void* p) {
  auto* t = static_cast<Trampoline*>(p);
  // Own session and process group: a kill of our group (Ctrl-C, kill -9 -pgid)
  // must not reach the helper while it holds the target's registers.
  syscall(SYS_setsid);
  t->result = t->body(t->arg);
  syscall(SYS_exit, 0);  // not exit(): no atexit handlers in shared memory
  return 0;
}
}  // namespace

int RunDetached(int (*body)(void*), void* arg) {
  const size_t kStack = 256 * 1024;
  void* stack = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED) return -errno;
  Trampoline t = {body, arg, -EIO};
  // The helper starts with every signal blocked (SIGKILL aside): Node's
  // handlers would otherwise run inside it, in shared memory.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pid_t pid =
      clone(TrampolineMain, static_cast<char*>(stack) + kStack, CLONE_VM | CLONE_FILES | CLONE_VFORK | SIGCHLD, &t);
  int e = errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid < 0) {
    munmap(stack, kStack);
    return -e;
  }
  int st;
  while (waitpid(pid, &st, __WALL) < 0 && errno == EINTR) {
  }
  munmap(stack, kStack);
  return t.result;
}

// ---------------------------------------------------------------- InjectOne
namespace {
struct OneCall {
  Target target;
  long nr;
  long args[6];
  long ret;
  int err;
  const char* where;
  int64_t ns;
};

int OneCallBody(void* p) {
  auto* c = static_cast<OneCall*>(p);
  Session s(c->target);
  int r = s.Attach(2000);
  if (r == 0) r = s.Call(c->nr, c->args, &c->ret);
  c->where = s.where();
  s.Detach();
  c->ns = s.stopped_ns();
  c->err = r;
  return r;
}
}  // namespace

int InjectOne(pid_t pid, long nr, const long args[6], long* ret, std::string* err, int64_t* ns) {
  OneCall c{};
  int r = Prepare(pid, &c.target, err);
  if (r < 0) return r;
  c.nr = nr;
  memcpy(c.args, args, sizeof c.args);
  r = RunDetached(OneCallBody, &c);
  if (r < 0) {
    *err = std::string("syscall injection failed at ") + (c.where ? c.where : "helper start") + ": " + strerror(-r);
    return r;
  }
  *ret = c.ret;
  *ns = c.ns;
  return 0;
}

}  // namespace inject
}  // namespace phaul
