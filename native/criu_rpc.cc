// CRIU's RPC, spoken directly ("criu swrk <fd>"), for what libcriu has no setter
// for: the page-server socket (ps.fd), lazy_pages, status_fd, and the notify
// hooks (post-dump, post-restore, ...) that let the JS side hold CRIU at a
// point of its choosing. One CriuSwrk object is one criu process and one
// request; the JS side drives the message loop (next / notifyReply), so this
// file knows nothing about migration policy.
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "async_job.h"
#include "modules.h"
#include "rpc.pb-c.h"  // from CRIU (pkg-config criu)

namespace phaul {
namespace {

std::string Errno(const std::string& what, int err = errno) { return what + ": " + strerror(err); }

// Owns the strings and sub-messages a CriuOpts points into until it is packed.
struct OptsBuilder {
  CriuOpts opts = CRIU_OPTS__INIT;
  CriuPageServerInfo ps = CRIU_PAGE_SERVER_INFO__INIT;
  std::vector<std::string> strings;
  std::vector<char*> externals;
  std::string log_file, root, parent_img, freeze_cgroup, ps_address;

  // A key that is absent, undefined or null means "not set".
  static bool Present(Napi::Object o, const char* k) {
    if (!o.Has(k)) return false;
    Napi::Value v = o.Get(k);
    return !v.IsUndefined() && !v.IsNull();
  }
  static bool Bool(Napi::Object o, const char* k, protobuf_c_boolean* has, protobuf_c_boolean* v) {
    if (!Present(o, k)) return false;
    *has = 1;
    *v = o.Get(k).ToBoolean().Value();
    return true;
  }
  static bool Int(Napi::Object o, const char* k, protobuf_c_boolean* has, int32_t* v) {
    if (!Present(o, k)) return false;
    *has = 1;
    *v = o.Get(k).ToNumber().Int32Value();
    return true;
  }

  void Build(Napi::Env env, Napi::Object o) {
    opts.images_dir_fd = Present(o, "imagesDirFd") ? o.Get("imagesDirFd").ToNumber().Int32Value() : -1;
    Int(o, "pid", &opts.has_pid, &opts.pid);
    Bool(o, "leaveRunning", &opts.has_leave_running, &opts.leave_running);
    Bool(o, "leaveStopped", &opts.has_leave_stopped, &opts.leave_stopped);
    Bool(o, "extUnixSk", &opts.has_ext_unix_sk, &opts.ext_unix_sk);
    Bool(o, "tcpEstablished", &opts.has_tcp_established, &opts.tcp_established);
    Bool(o, "tcpClose", &opts.has_tcp_close, &opts.tcp_close);
    Bool(o, "shellJob", &opts.has_shell_job, &opts.shell_job);
    Bool(o, "fileLocks", &opts.has_file_locks, &opts.file_locks);
    Bool(o, "notifyScripts", &opts.has_notify_scripts, &opts.notify_scripts);
    Bool(o, "lazyPages", &opts.has_lazy_pages, &opts.lazy_pages);
    Bool(o, "manageCgroups", &opts.has_manage_cgroups, &opts.manage_cgroups);
    Bool(o, "rstSibling", &opts.has_rst_sibling, &opts.rst_sibling);
    Bool(o, "orphanPtsMaster", &opts.has_orphan_pts_master, &opts.orphan_pts_master);
    Bool(o, "evasiveDevices", &opts.has_evasive_devices, &opts.evasive_devices);
    Bool(o, "linkRemap", &opts.has_link_remap, &opts.link_remap);
    Bool(o, "autoDedup", &opts.has_auto_dedup, &opts.auto_dedup);
    Bool(o, "logToStderr", &opts.has_log_to_stderr, &opts.log_to_stderr);
    Int(o, "logLevel", &opts.has_log_level, &opts.log_level);
    Int(o, "statusFd", &opts.has_status_fd, &opts.status_fd);
    Int(o, "workDirFd", &opts.has_work_dir_fd, &opts.work_dir_fd);
    if (Present(o, "timeout")) {
      opts.has_timeout = 1;
      opts.timeout = o.Get("timeout").ToNumber().Uint32Value();
    }
    if (Present(o, "logFile")) {
      log_file = o.Get("logFile").ToString().Utf8Value();
      opts.log_file = const_cast<char*>(log_file.c_str());
    }
    if (Present(o, "root")) {
      root = o.Get("root").ToString().Utf8Value();
      opts.root = const_cast<char*>(root.c_str());
    }
    if (Present(o, "parentImg")) {
      parent_img = o.Get("parentImg").ToString().Utf8Value();
      opts.parent_img = const_cast<char*>(parent_img.c_str());
    }
    if (Present(o, "freezeCgroup")) {
      freeze_cgroup = o.Get("freezeCgroup").ToString().Utf8Value();
      opts.freeze_cgroup = const_cast<char*>(freeze_cgroup.c_str());
    }
    if (Present(o, "networkLock")) {
      std::string m = o.Get("networkLock").ToString().Utf8Value();
      opts.has_network_lock = 1;
      if (m == "iptables")
        opts.network_lock = CRIU_NETWORK_LOCK_METHOD__IPTABLES;
      else if (m == "nftables")
        opts.network_lock = CRIU_NETWORK_LOCK_METHOD__NFTABLES;
      else if (m == "skip")
        opts.network_lock = CRIU_NETWORK_LOCK_METHOD__SKIP;
      else
        throw Napi::TypeError::New(env, "networkLock must be iptables, nftables or skip");
    }
    if (Present(o, "psFd") || Present(o, "psPort")) {
      Int(o, "psFd", &ps.has_fd, &ps.fd);
      Int(o, "psPort", &ps.has_port, &ps.port);
      if (Present(o, "psAddress")) {
        ps_address = o.Get("psAddress").ToString().Utf8Value();
        ps.address = const_cast<char*>(ps_address.c_str());
      }
      opts.ps = &ps;
    }
    if (Present(o, "external")) {
      Napi::Array a = o.Get("external").As<Napi::Array>();
      strings.reserve(a.Length());
      for (uint32_t i = 0; i < a.Length(); i++) strings.push_back(a.Get(i).ToString().Utf8Value());
      for (auto& s : strings) externals.push_back(const_cast<char*>(s.c_str()));
      opts.n_external = externals.size();
      opts.external = externals.data();
    }
  }
};

CriuReqType ReqType(Napi::Env env, const std::string& t) {
  if (t == "dump") return CRIU_REQ_TYPE__DUMP;
  if (t == "restore") return CRIU_REQ_TYPE__RESTORE;
  if (t == "check") return CRIU_REQ_TYPE__CHECK;
  if (t == "version") return CRIU_REQ_TYPE__VERSION;
  throw Napi::TypeError::New(env, "unsupported CRIU request type '" + t + "'");
}

// The result of one recv: a decoded CriuResp, or an error / end of stream.
struct Message {
  bool eof = false;
  std::string error;
  int type = 0;
  bool success = false;
  bool has_notify = false;
  std::string script;
  int notify_pid = 0;
  int restore_pid = 0;
  bool has_errno = false;
  int cr_errno = 0;
  std::string errmsg;
  int major = 0, minor = 0, sublevel = 0;
  bool has_version = false;
};

Message Receive(int sk) {
  Message m;
  // CRIU sends one message per SEQPACKET record; peek its size first.
  ssize_t len;
  do len = recv(sk, nullptr, 0, MSG_PEEK | MSG_TRUNC);
  while (len < 0 && errno == EINTR);
  if (len == 0) {
    m.eof = true;
    return m;
  }
  if (len < 0) {
    m.error = Errno("recv from criu");
    return m;
  }
  std::vector<uint8_t> buf(len);
  char cbuf[CMSG_SPACE(sizeof(int))];
  struct iovec iov = {buf.data(), buf.size()};
  struct msghdr mh = {};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = cbuf;
  mh.msg_controllen = sizeof(cbuf);
  do len = recvmsg(sk, &mh, MSG_CMSG_CLOEXEC);
  while (len < 0 && errno == EINTR);
  if (len <= 0) {
    m.error = len == 0 ? "criu closed the connection" : Errno("recvmsg from criu");
    m.eof = len == 0;
    return m;
  }
  // CRIU may attach a descriptor to a notification; we never need one.
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) close(*reinterpret_cast<int*>(CMSG_DATA(c)));
  CriuResp* r = criu_resp__unpack(nullptr, len, buf.data());
  if (!r) {
    m.error = "criu sent a message that does not decode";
    return m;
  }
  m.type = r->type;
  m.success = r->success;
  if (r->notify) {
    m.has_notify = true;
    if (r->notify->script) m.script = r->notify->script;
    if (r->notify->has_pid) m.notify_pid = r->notify->pid;
  }
  if (r->restore) m.restore_pid = r->restore->pid;
  if (r->has_cr_errno) {
    m.has_errno = true;
    m.cr_errno = r->cr_errno;
  }
  if (r->cr_errmsg) m.errmsg = r->cr_errmsg;
  if (r->version) {
    m.has_version = true;
    m.major = r->version->major_number;
    m.minor = r->version->minor_number;
    m.sublevel = r->version->has_sublevel ? r->version->sublevel : 0;
  }
  criu_resp__free_unpacked(r, nullptr);
  return m;
}

// One message from CRIU as the JS object src/native/criu-rpc.ts types.
Napi::Value MessageObject(Napi::Env env, const Message& m) {
  if (!m.error.empty() && !m.eof) throw Napi::Error::New(env, m.error);
  Napi::Object o = Napi::Object::New(env);
  o.Set("eof", m.eof);
  if (!m.eof) {
    static const char* names[] = {"empty",  "dump",         "restore",       "check",         "pre-dump", "page-server",
                                  "notify", "cpuinfo-dump", "cpuinfo-check", "feature-check", "version"};
    o.Set("type", m.type >= 0 && m.type <= 10 ? names[m.type] : "unknown");
    o.Set("success", m.success);
    if (m.has_notify) {
      o.Set("script", m.script);
      if (m.notify_pid) o.Set("pid", m.notify_pid);
    }
    if (m.restore_pid) o.Set("restorePid", m.restore_pid);
    if (m.has_errno) o.Set("crErrno", m.cr_errno);
    if (!m.errmsg.empty()) o.Set("crErrmsg", m.errmsg);
    if (m.has_version) {
      Napi::Object v = Napi::Object::New(env);
      v.Set("major", m.major);
      v.Set("minor", m.minor);
      v.Set("sublevel", m.sublevel);
      o.Set("version", v);
    }
  }
  return o;
}

class CriuSwrk : public Napi::ObjectWrap<CriuSwrk> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "CriuSwrk",
                       {InstanceMethod("request", &CriuSwrk::Request), InstanceMethod("next", &CriuSwrk::Next),
                        InstanceMethod("notifyReply", &CriuSwrk::NotifyReply), InstanceMethod("wait", &CriuSwrk::Wait),
                        InstanceMethod("kill", &CriuSwrk::Kill), InstanceMethod("close", &CriuSwrk::Close),
                        InstanceAccessor("pid", &CriuSwrk::Pid, nullptr)});
  }

  // new CriuSwrk(criuPath, inheritFds: number[])
  CriuSwrk(const Napi::CallbackInfo& info) : Napi::ObjectWrap<CriuSwrk>(info) {
    Napi::Env env = info.Env();
    std::string criu = info[0].ToString().Utf8Value();
    std::vector<int> inherit;
    if (info.Length() > 1 && info[1].IsArray()) {
      Napi::Array a = info[1].As<Napi::Array>();
      for (uint32_t i = 0; i < a.Length(); i++) inherit.push_back(a.Get(i).ToNumber().Int32Value());
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
      throw Napi::Error::New(env, Errno("socketpair for criu swrk"));
    // Everything the child needs is prepared before fork: after fork in a
    // threaded process only async-signal-safe calls are allowed.
    std::string fdarg = std::to_string(sv[1]);
    const char* argv[] = {criu.c_str(), "swrk", fdarg.c_str(), nullptr};
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    pid_t pid = fork();
    if (pid < 0) {
      int e = errno;
      close(sv[0]);
      close(sv[1]);
      if (devnull >= 0) close(devnull);
      errno = e;
      throw Napi::Error::New(env, Errno("fork criu"));
    }
    if (pid == 0) {
      // Its own process group: a Ctrl-C at the terminal reaches our agent,
      // which rolls back and tells CRIU, not CRIU in the middle of a dump.
      setpgid(0, 0);
      sigset_t all;
      sigemptyset(&all);
      sigprocmask(SIG_SETMASK, &all, nullptr);
      for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);
      if (devnull >= 0) dup2(devnull, 0);
      fcntl(sv[1], F_SETFD, 0);
      for (int fd : inherit) fcntl(fd, F_SETFD, 0);
      execv(argv[0], const_cast<char* const*>(argv));
      _exit(127);
    }
    if (devnull >= 0) close(devnull);
    close(sv[1]);
    sk_ = sv[0];
    pid_ = pid;
  }

  ~CriuSwrk() override {
    if (sk_ >= 0) close(sk_);
  }

 private:
  // request({ type, opts: {...}, keepOpen })
  Napi::Value Request(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (sk_ < 0) throw Napi::Error::New(env, "criu session is closed");
    Napi::Object r = info[0].As<Napi::Object>();
    CriuReq req = CRIU_REQ__INIT;
    req.type = ReqType(env, r.Get("type").ToString().Utf8Value());
    OptsBuilder ob;
    if (r.Has("opts") && r.Get("opts").IsObject()) {
      ob.Build(env, r.Get("opts").As<Napi::Object>());
      req.opts = &ob.opts;
    } else if (req.type == CRIU_REQ_TYPE__DUMP || req.type == CRIU_REQ_TYPE__RESTORE) {
      throw Napi::TypeError::New(env, "dump and restore need opts");
    }
    return Napi::Boolean::New(env, Send(env, &req));
  }

  bool Send(Napi::Env env, CriuReq* req) {
    size_t len = criu_req__get_packed_size(req);
    std::vector<uint8_t> buf(len);
    criu_req__pack(req, buf.data());
    ssize_t n;
    do n = send(sk_, buf.data(), len, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0) throw Napi::Error::New(env, Errno("send to criu"));
    return true;
  }

  Napi::Value Next(const Napi::CallbackInfo& info) {
    if (sk_ < 0) throw Napi::Error::New(info.Env(), "criu session is closed");
    auto msg = std::make_shared<Message>();
    int sk = sk_;
    return AsyncJob::Run(
        info.Env(), [msg, sk] { *msg = Receive(sk); }, [msg](Napi::Env env) { return MessageObject(env, *msg); });
  }

  // Answers a notify: true lets CRIU go on; false makes it fail the action
  // (after post-dump that resumes the dumped tasks).
  Napi::Value NotifyReply(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (sk_ < 0) throw Napi::Error::New(env, "criu session is closed");
    CriuReq req = CRIU_REQ__INIT;
    req.type = CRIU_REQ_TYPE__NOTIFY;
    req.has_notify_success = 1;
    req.notify_success = info[0].ToBoolean().Value();
    return Napi::Boolean::New(env, Send(env, &req));
  }

  Napi::Value Wait(const Napi::CallbackInfo& info) {
    struct Exit {
      int status = 0;
      int err = 0;
    };
    auto ex = std::make_shared<Exit>();
    pid_t pid = pid_;
    return AsyncJob::Run(
        info.Env(),
        [ex, pid] {
          int r;
          do r = waitpid(pid, &ex->status, 0);
          while (r < 0 && errno == EINTR);
          if (r < 0) ex->err = errno;
        },
        [ex](Napi::Env env) -> Napi::Value {
          if (ex->err) throw Napi::Error::New(env, Errno("waitpid criu", ex->err));
          Napi::Object o = Napi::Object::New(env);
          if (WIFEXITED(ex->status)) o.Set("code", WEXITSTATUS(ex->status));
          if (WIFSIGNALED(ex->status)) o.Set("signal", WTERMSIG(ex->status));
          return o;
        });
  }

  Napi::Value Kill(const Napi::CallbackInfo& info) {
    int sig = info.Length() > 0 ? info[0].ToNumber().Int32Value() : SIGKILL;
    return Napi::Boolean::New(info.Env(), kill(pid_, sig) == 0);
  }

  // Closing our end is how a caller abandons CRIU mid-notify: CRIU sees EOF,
  // treats it as a failed hook, and rolls back.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (sk_ >= 0) {
      shutdown(sk_, SHUT_RDWR);
      close(sk_);
      sk_ = -1;
    }
    return info.Env().Undefined();
  }

  Napi::Value Pid(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), pid_); }

  int sk_ = -1;
  pid_t pid_ = -1;
};

// Opens a directory for CRIU to reach through /proc/<our pid>/fd/N.
Napi::Value OpenDir(const Napi::CallbackInfo& info) {
  std::string p = info[0].ToString().Utf8Value();
  int fd = open(p.c_str(), O_DIRECTORY | O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Napi::Error::New(info.Env(), Errno("open " + p));
  return Napi::Number::New(info.Env(), fd);
}

Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  close(info[0].ToNumber().Int32Value());
  return info.Env().Undefined();
}

// dup() of a descriptor Node owns, so the caller can hand it to CRIU or to a
// native server and then let Node close its own copy.
Napi::Value DupFd(const Napi::CallbackInfo& info) {
  int fd = fcntl(info[0].ToNumber().Int32Value(), F_DUPFD_CLOEXEC, 3);
  if (fd < 0) throw Napi::Error::New(info.Env(), Errno("dup"));
  return Napi::Number::New(info.Env(), fd);
}

// mkfifo(path, mode): CRIU's log gate (src/criu/gate.ts). A system call
// instead of running mkfifo(1): a migrate spent ~10 ms of CPU forking for it.
Napi::Value MakeFifo(const Napi::CallbackInfo& info) {
  std::string p = info[0].ToString().Utf8Value();
  if (mkfifo(p.c_str(), mode_t(info[1].ToNumber().Uint32Value() & 0777)) < 0)
    throw Napi::Error::New(info.Env(), Errno("mkfifo " + p));
  return info.Env().Undefined();
}

}  // namespace

void InitCriuRpc(Napi::Env env, Napi::Object exports) {
  exports.Set("CriuSwrk", CriuSwrk::Define(env));
  exports.Set("openDir", Napi::Function::New(env, OpenDir));
  exports.Set("closeFd", Napi::Function::New(env, CloseFd));
  exports.Set("dupFd", Napi::Function::New(env, DupFd));
  exports.Set("makeFifo", Napi::Function::New(env, MakeFifo));
}

}  // namespace phaul
