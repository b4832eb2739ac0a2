// libcriu wrappers: criuCheck, criuDump, criuRestore, criuVersion. Why each
// call owns a thread and spawns its own `criu swrk`: see criu_ops.h.
#include "criu_ops.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include "modules.h"
#include "thread_job.h"

extern "C" {
#include <criu.h>
}

extern char** environ;

namespace phaul {
namespace criu_ops {
namespace {

enum class Kind { kCheck, kDump, kRestore, kVersion };

const char* KindName(Kind k) {
  switch (k) {
    case Kind::kCheck: return "check";
    case Kind::kDump: return "dump";
    case Kind::kRestore: return "restore";
    case Kind::kVersion: return "version";
  }
  return "?";
}

struct Job {
  Kind kind;
  CallOptions o;
  // Results, written by the call's thread, read on the main thread.
  bool ok = false;
  int value = 0;      // restore: pid; version: major*10000+minor*100+sublevel
  int criuRet = 0;    // libcriu's negative return code on failure
  int criuErrno = 0;  // errno libcriu reported (CRIU's cr_errno for -EBADE)
  bool timedOut = false;
  std::string logPath;
  std::string message;  // one line
  Job(Kind k, CallOptions opts) : kind(k), o(std::move(opts)) {}
};

// ------------------------------------------------------------------ helpers

std::string ErrnoText(int e) { return std::string(strerror(e)) + " (errno " + std::to_string(e) + ")"; }

// The last CRIU error lines of a log file, joined with " | ": what a user needs
// to see without opening the log. Lines look like
// "(00.012345) Error (criu/cr-dump.c:1664): message" or "Error (...): message".
std::string LogTail(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return "";
  f.seekg(0, std::ios::end);
  std::streamoff size = f.tellg();
  std::streamoff from = size > 16384 ? size - 16384 : 0;
  f.seekg(from);
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<std::string> errors;
  std::string last, line;
  std::istringstream in(text);
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    last = line;
    size_t at = line.find("Error (");
    if (at == std::string::npos) continue;
    // Root without CAP_SYS_RESOURCE always gets this one and CRIU carries on:
    // reporting it would hide the real cause (docs/DESIGN.md section 2).
    if (line.find("RLIMIT_NOFILE") != std::string::npos) continue;
    size_t colon = line.find("): ", at);
    errors.push_back(colon == std::string::npos ? line.substr(at) : line.substr(colon + 3));
  }
  if (errors.empty()) return last;
  size_t first = errors.size() > 3 ? errors.size() - 3 : 0;
  std::string out;
  for (size_t i = first; i < errors.size(); i++) out += (i > first ? " | " : "") + errors[i];
  return out;
}

std::string WaitStatusText(int status) {
  if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("killed by ") + strsignal(WTERMSIG(status));
  return "status " + std::to_string(status);
}

// Every descendant of pid, parents before children, from /proc/*/task/*/children.
void Descendants(pid_t pid, std::vector<pid_t>* out) {
  std::string dir = "/proc/" + std::to_string(pid) + "/task";
  DIR* d = opendir(dir.c_str());
  if (!d) return;
  std::vector<pid_t> kids;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream f(dir + "/" + e->d_name + "/children");
    pid_t c;
    while (f >> c) kids.push_back(c);
  }
  closedir(d);
  for (pid_t c : kids) {
    out->push_back(c);
    Descendants(c, out);
  }
}

// Kills a hung swrk and whatever it was restoring. Only pids under our own
// swrk child are touched, and the swrk is not reaped before this runs, so its
// pid cannot have been reused.
class Watchdog {
 public:
  void Start(pid_t swrk, unsigned ms) {
    if (ms == 0) return;
    thread_ = std::thread([this, swrk, ms] {
      std::unique_lock<std::mutex> lock(mu_);
      if (cv_.wait_for(lock, std::chrono::milliseconds(ms), [this] { return done_; })) return;
      fired_ = true;
      kill(swrk, SIGSTOP);  // no new children while we collect them
      std::vector<pid_t> tree;
      Descendants(swrk, &tree);
      for (pid_t p : tree) kill(p, SIGKILL);
      kill(swrk, SIGKILL);
    });
  }
  // Returns whether the watchdog fired.
  bool Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    return fired_;
  }

 private:
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  bool fired_ = false;
};

// Starts `criu swrk 3` with one end of a socketpair as its fd 3; returns the
// pid and our end in *sk, or -errno.
pid_t SpawnSwrk(const std::string& binary, int* sk) {
  int sp[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0) return -errno;
  if (sp[1] == 3) {  // dup2(3, 3) would keep CLOEXEC; move it out of the way
    int moved = fcntl(sp[1], F_DUPFD_CLOEXEC, 10);
    close(sp[1]);
    if (moved < 0) {
      int e = errno;
      close(sp[0]);
      return -e;
    }
    sp[1] = moved;
  }
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t at;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, sp[1], 3);
  posix_spawn_file_actions_addclosefrom_np(&fa, 4);  // nothing else of node's leaks into criu
  posix_spawnattr_init(&at);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&at, &none);  // CRIU relies on SIGCHLD being deliverable
  posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK);
  std::string arg0 = binary;
  char swrk[] = "swrk", fd3[] = "3";
  char* argv[] = {&arg0[0], swrk, fd3, nullptr};
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, binary.c_str(), &fa, &at, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&at);
  close(sp[1]);
  if (rc != 0) {
    close(sp[0]);
    return -rc;
  }
  *sk = sp[0];
  return pid;
}

// Applies the call's options to a fresh criu_opts. Returns "" or an error.
std::string Configure(criu_opts* co, const Job& j, int imagesFd, int workFd) {
  const CallOptions& o = j.o;
  if (imagesFd >= 0) criu_local_set_images_dir_fd(co, imagesFd);
  if (workFd >= 0) criu_local_set_work_dir_fd(co, workFd);
  if (!o.logFile.empty() && criu_local_set_log_file(co, o.logFile.c_str()) < 0) return "cannot set logFile";
  if (o.logLevel >= 0) criu_local_set_log_level(co, o.logLevel);
  if (j.kind == Kind::kDump) {
    criu_local_set_pid(co, o.pid);
    if (!o.parentImages.empty() && criu_local_set_parent_images(co, o.parentImages.c_str()) < 0)
      return "cannot set parentImages";
    if (o.leaveRunning) criu_local_set_leave_running(co, true);
    if (o.leaveStopped) {
      // libcriu 4.1 has no setter for leave_stopped (rpc.proto field 69). Its
      // opaque criu_opts starts with the CriuOpts request it sends; the pid
      // just set proves that layout before we write the field.
      CriuOpts* rpc = *reinterpret_cast<CriuOpts**>(co);
      if (!rpc || !rpc->has_pid || rpc->pid != o.pid) return "leaveStopped is not supported with this libcriu";
      rpc->has_leave_stopped = true;
      rpc->leave_stopped = true;
    }
    if (!o.freezeCgroup.empty() && criu_local_set_freeze_cgroup(co, o.freezeCgroup.c_str()) < 0)
      return "cannot set freezeCgroup";
  }
  if (o.shellJob) criu_local_set_shell_job(co, true);
  if (o.tcpEstablished) criu_local_set_tcp_established(co, true);
  if (o.tcpClose) criu_local_set_tcp_close(co, true);
  if (o.extUnixSk) criu_local_set_ext_unix_sk(co, true);
  if (o.fileLocks) criu_local_set_file_locks(co, true);
  if (o.linkRemap) criu_local_set_link_remap(co, true);
  if (!o.networkLock.empty()) {
    criu_network_lock_method m = o.networkLock == "iptables"   ? CRIU_NETWORK_LOCK_IPTABLES
                                 : o.networkLock == "nftables" ? CRIU_NETWORK_LOCK_NFTABLES
                                                               : CRIU_NETWORK_LOCK_SKIP;
    if (criu_local_set_network_lock(co, m) < 0) return "cannot set networkLock";
  }
  switch (o.manageCgroups) {
    case CgroupMode::kDefault: break;
    case CgroupMode::kOff: criu_local_set_manage_cgroups(co, false); break;
    case CgroupMode::kIgnore: criu_local_set_manage_cgroups_mode(co, CRIU_CG_MODE_IGNORE); break;
    case CgroupMode::kNone: criu_local_set_manage_cgroups_mode(co, CRIU_CG_MODE_NONE); break;
    case CgroupMode::kProps: criu_local_set_manage_cgroups_mode(co, CRIU_CG_MODE_PROPS); break;
    case CgroupMode::kSoft: criu_local_set_manage_cgroups_mode(co, CRIU_CG_MODE_SOFT); break;
    case CgroupMode::kFull: criu_local_set_manage_cgroups_mode(co, CRIU_CG_MODE_FULL); break;
    case CgroupMode::kStrict: criu_local_set_manage_cgroups_mode(co, CRIU_CG_MODE_STRICT); break;
  }
  if (o.manageCgroups != CgroupMode::kDefault && o.manageCgroups != CgroupMode::kOff)
    criu_local_set_manage_cgroups(co, true);
  return "";
}

// libcriu 4.1.1's criu_local_check() sends its request without options and
// the swrk's check worker dereferences them: SIGSEGV, so it always fails
// (upstream issue #2758, fixed after 4.1.1). Check therefore speaks the same
// RPC itself, options set, with the protobuf code libcriu exports. Returns 0,
// -EBADE when CRIU says no (with cr_errno/cr_errmsg), or -ECOMM.
int RpcCheck(int sk, int imagesFd, int workFd, const CallOptions& o, int* crErrno, std::string* crMsg) {
  CriuOpts opts;
  criu_opts__init(&opts);
  opts.images_dir_fd = imagesFd;
  if (workFd >= 0) {
    opts.has_work_dir_fd = true;
    opts.work_dir_fd = workFd;
  }
  std::string logFile = o.logFile;
  if (!logFile.empty()) opts.log_file = &logFile[0];
  if (o.logLevel >= 0) {
    opts.has_log_level = true;
    opts.log_level = o.logLevel;
  }
  CriuReq req;
  criu_req__init(&req);
  req.type = CRIU_REQ_TYPE__CHECK;
  req.opts = &opts;
  std::vector<uint8_t> out(criu_req__get_packed_size(&req));
  criu_req__pack(&req, out.data());
  if (send(sk, out.data(), out.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(out.size())) return -ECOMM;
  // SOCK_SEQPACKET: one reply, one message; peek its size first.
  ssize_t len;
  while ((len = recv(sk, nullptr, 0, MSG_PEEK | MSG_TRUNC)) < 0 && errno == EINTR) {
  }
  if (len <= 0) return -ECOMM;
  std::vector<uint8_t> in(static_cast<size_t>(len));
  if (recv(sk, in.data(), in.size(), 0) != len) return -ECOMM;
  CriuResp* resp = criu_resp__unpack(nullptr, in.size(), in.data());
  if (!resp) return -EBADMSG;
  int ret = resp->type != CRIU_REQ_TYPE__CHECK ? -EBADMSG : resp->success ? 0 : -EBADE;
  if (resp->has_cr_errno) *crErrno = resp->cr_errno;
  if (resp->cr_errmsg) *crMsg = resp->cr_errmsg;
  criu_resp__free_unpacked(resp, nullptr);
  return ret;
}

std::string RetText(int ret) {
  switch (-ret) {
    case EBADE: return "CRIU reported failure";
    case ECONNREFUSED: return "could not talk to criu swrk";
    case ECOMM: return "lost the connection to criu swrk";
    case EINVAL: return "this CRIU does not support the request";
    case EBADMSG: return "unexpected reply from CRIU";
    default: return "libcriu returned " + std::to_string(ret);
  }
}

// Runs one libcriu call on the current (dedicated) thread.
void Run(Job* j) {
  const CallOptions& o = j->o;
  std::string head =
      std::string("criu ") + KindName(j->kind) + (j->kind == Kind::kDump ? " of pid " + std::to_string(o.pid) : "");
  int imagesFd = -1, workFd = -1;
  if (!o.imagesDir.empty()) {
    imagesFd = open(o.imagesDir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (imagesFd < 0) {
      j->message = head + " failed: imagesDir " + o.imagesDir + ": " + ErrnoText(errno);
      return;
    }
  }
  if (!o.workDir.empty()) {
    workFd = open(o.workDir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (workFd < 0) {
      j->message = head + " failed: workDir " + o.workDir + ": " + ErrnoText(errno);
      if (imagesFd >= 0) close(imagesFd);
      return;
    }
  }
  if (!o.logFile.empty()) j->logPath = (o.workDir.empty() ? o.imagesDir : o.workDir) + "/" + o.logFile;

  criu_opts* co = nullptr;
  std::string err;
  if (criu_local_init_opts(&co) < 0) err = "criu_local_init_opts failed";
  if (err.empty() && j->kind != Kind::kCheck) err = Configure(co, *j, imagesFd, workFd);
  int sk = -1;
  pid_t swrk = -1;
  if (err.empty()) {
    swrk = SpawnSwrk(o.criuBinary, &sk);
    if (swrk < 0) err = "cannot run " + o.criuBinary + " swrk: " + ErrnoText(-swrk);
  }
  if (!err.empty()) {
    j->message = head + " failed: " + err;
  } else {
    Watchdog dog;
    dog.Start(swrk, o.timeoutMs);
    int ret = -1, e = 0;
    std::string crMsg;
    if (j->kind == Kind::kCheck) {
      ret = RpcCheck(sk, imagesFd, workFd, o, &e, &crMsg);
      close(sk);
    } else {
      criu_local_set_service_fd(co, sk);  // libcriu closes it when the call ends
      switch (j->kind) {
        case Kind::kDump: ret = criu_local_dump(co); break;
        case Kind::kRestore: ret = criu_local_restore(co); break;
        default: ret = criu_local_get_version(co); break;
      }
      // libcriu's errno comes from a process-wide variable: with calls running
      // concurrently it may belong to another call, so it is only a hint.
      e = errno;
    }
    j->timedOut = dog.Stop();
    int status = 0;
    while (waitpid(swrk, &status, 0) < 0 && errno == EINTR) {
    }
    bool good = j->kind == Kind::kRestore || j->kind == Kind::kVersion ? ret > 0 : ret >= 0;
    if (good && !j->timedOut) {
      j->ok = true;
      j->value = ret;
    } else {
      j->criuRet = ret;
      j->criuErrno = ret == -EBADE ? e : 0;
      std::string m = head + " failed: ";
      if (j->timedOut)
        m += "timed out after " + std::to_string(o.timeoutMs) + " ms; criu and its children were killed";
      else
        m += RetText(ret);
      if (j->criuErrno) m += ", " + ErrnoText(j->criuErrno);
      if (!crMsg.empty()) m += ": " + crMsg;
      if (ret == -ECOMM && !j->timedOut) m += ", criu swrk " + WaitStatusText(status);
      std::string tail = j->logPath.empty() ? "" : LogTail(j->logPath);
      if (!tail.empty()) m += "; " + j->logPath + ": " + tail;
      j->message = m;
    }
  }
  if (co) criu_local_free_opts(co);
  if (imagesFd >= 0) close(imagesFd);
  if (workFd >= 0) close(workFd);
}

// ------------------------------------------------------------------ JS glue

// The call's result as JS sees it, on the JS thread.
Napi::Value Result(Napi::Env env, const Job& j) {
  if (!j.ok) {
    Napi::Error e = Napi::Error::New(env, j.message);
    e.Set("criuRet", Napi::Number::New(env, j.criuRet));
    e.Set("errno", Napi::Number::New(env, j.criuErrno));
    e.Set("timedOut", Napi::Boolean::New(env, j.timedOut));
    if (!j.logPath.empty()) e.Set("logPath", Napi::String::New(env, j.logPath));
    throw e;
  }
  if (j.kind == Kind::kRestore || j.kind == Kind::kVersion) return Napi::Number::New(env, j.value);
  return env.Undefined();
}

std::string Str(const Napi::Object& o, const char* k) {
  Napi::Value v = o.Get(k);
  if (v.IsUndefined() || v.IsNull()) return "";
  if (!v.IsString()) throw Napi::TypeError::New(o.Env(), std::string(k) + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

bool Bool(const Napi::Object& o, const char* k) {
  Napi::Value v = o.Get(k);
  if (v.IsUndefined() || v.IsNull()) return false;
  if (!v.IsBoolean()) throw Napi::TypeError::New(o.Env(), std::string(k) + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

int64_t Int(const Napi::Object& o, const char* k, int64_t dflt, int64_t min, int64_t max) {
  Napi::Value v = o.Get(k);
  if (v.IsUndefined() || v.IsNull()) return dflt;
  double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1e300;
  if (d != static_cast<double>(static_cast<int64_t>(d)) || d < min || d > max)
    throw Napi::TypeError::New(
        o.Env(), std::string(k) + " must be an integer in " + std::to_string(min) + ".." + std::to_string(max));
  return static_cast<int64_t>(d);
}

CallOptions Parse(const Napi::Object& o, Kind kind) {
  Napi::Env env = o.Env();
  CallOptions c;
  c.criuBinary = Str(o, "criuBinary");
  if (c.criuBinary.empty()) throw Napi::TypeError::New(env, "criuBinary is required");
  c.imagesDir = Str(o, "imagesDir");
  if (c.imagesDir.empty() && kind != Kind::kVersion) throw Napi::TypeError::New(env, "imagesDir is required");
  c.workDir = Str(o, "workDir");
  c.logFile = Str(o, "logFile");
  if (c.logFile.find('/') != std::string::npos)
    throw Napi::TypeError::New(env, "logFile must be a bare file name (it goes in workDir)");
  c.logLevel = static_cast<int>(Int(o, "logLevel", -1, 0, 4));
  c.pid = static_cast<int>(Int(o, "pid", 0, 1, 0x7fffffff));
  if (kind == Kind::kDump && c.pid == 0)
    throw Napi::TypeError::New(env, "pid is required (without it CRIU would dump this process)");
  c.parentImages = Str(o, "parentImages");
  c.leaveRunning = Bool(o, "leaveRunning");
  c.leaveStopped = Bool(o, "leaveStopped");
  if (c.leaveRunning && c.leaveStopped)
    throw Napi::TypeError::New(env, "leaveRunning and leaveStopped exclude each other");
  c.shellJob = Bool(o, "shellJob");
  c.tcpEstablished = Bool(o, "tcpEstablished");
  c.tcpClose = Bool(o, "tcpClose");
  c.extUnixSk = Bool(o, "extUnixSk");
  c.fileLocks = Bool(o, "fileLocks");
  c.linkRemap = Bool(o, "linkRemap");
  c.networkLock = Str(o, "networkLock");
  if (!c.networkLock.empty() && c.networkLock != "iptables" && c.networkLock != "nftables" && c.networkLock != "skip")
    throw Napi::TypeError::New(env, "networkLock must be 'iptables', 'nftables' or 'skip'");
  Napi::Value mc = o.Get("manageCgroups");
  if (mc.IsBoolean()) {
    c.manageCgroups = mc.As<Napi::Boolean>().Value() ? CgroupMode::kSoft : CgroupMode::kOff;
  } else if (mc.IsString()) {
    std::string m = mc.As<Napi::String>().Utf8Value();
    if (m == "ignore")
      c.manageCgroups = CgroupMode::kIgnore;
    else if (m == "none")
      c.manageCgroups = CgroupMode::kNone;
    else if (m == "props")
      c.manageCgroups = CgroupMode::kProps;
    else if (m == "soft")
      c.manageCgroups = CgroupMode::kSoft;
    else if (m == "full")
      c.manageCgroups = CgroupMode::kFull;
    else if (m == "strict")
      c.manageCgroups = CgroupMode::kStrict;
    else
      throw Napi::TypeError::New(env, "manageCgroups must be a boolean or ignore|none|props|soft|full|strict");
  } else if (!mc.IsUndefined() && !mc.IsNull()) {
    throw Napi::TypeError::New(env, "manageCgroups must be a boolean or a mode name");
  }
  c.freezeCgroup = Str(o, "freezeCgroup");
  c.timeoutMs = static_cast<unsigned>(Int(o, "timeoutMs", 0, 0, 0x7fffffff));
  return c;
}

Napi::Value Start(const Napi::CallbackInfo& info, Kind kind) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "expected an options object");
  auto j = std::make_shared<Job>(kind, Parse(info[0].As<Napi::Object>(), kind));
  // A thread of its own: a dump can take minutes (thread_job.h).
  return ThreadJob::Start(
      env, (std::string("phaul-criu-") + KindName(kind)).c_str(), [j] { Run(j.get()); },
      [j](Napi::Env env) { return Result(env, *j); });
}

}  // namespace
}  // namespace criu_ops

// criuCheck(opts) -> Promise<void>; criuDump(opts) -> Promise<void>;
// criuRestore(opts) -> Promise<pid>; criuVersion(opts) -> Promise<number>.
// Rejections are Errors with a one-line message plus criuRet, errno, timedOut, logPath.
void InitCriuOps(Napi::Env env, Napi::Object exports) {
  using criu_ops::Kind;
  exports.Set("criuCheck",
              Napi::Function::New(
                  env, [](const Napi::CallbackInfo& i) { return criu_ops::Start(i, Kind::kCheck); }, "criuCheck"));
  exports.Set("criuDump",
              Napi::Function::New(
                  env, [](const Napi::CallbackInfo& i) { return criu_ops::Start(i, Kind::kDump); }, "criuDump"));
  exports.Set("criuRestore",
              Napi::Function::New(
                  env, [](const Napi::CallbackInfo& i) { return criu_ops::Start(i, Kind::kRestore); }, "criuRestore"));
  exports.Set("criuVersion",
              Napi::Function::New(
                  env, [](const Napi::CallbackInfo& i) { return criu_ops::Start(i, Kind::kVersion); }, "criuVersion"));
}

}  // namespace phaul
