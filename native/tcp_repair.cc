// Takes a process's TCP sockets out of repair mode. CRIU puts every socket it
// dumps with --tcp-established into TCP_REPAIR and takes them out again only
// when it unlocks the network; a lazy dump that is rolled back after its
// images were written (or a dump that succeeded, leaving the tree stopped)
// resumes the tree without doing so, and a socket left in repair mode neither
// sends nor acknowledges. We reach the sockets through pidfd_getfd (a
// duplicate of the same socket) and turn repair off as CRIU would
// (TCP_REPAIR_OFF, which also sends a window probe to the peer).
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <string>

#include "modules.h"
#include "uapi_compat.h"  // pidfd syscall numbers

#ifndef TCP_REPAIR
#define TCP_REPAIR 19
#endif

namespace phaul {
namespace {

struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) close(fd);
  }
};

// tcpRepairOff(pid) -> { sockets, released }: TCP sockets seen, and how many were in repair mode.
Napi::Value TcpRepairOff(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "tcpRepairOff(pid)");
  int pid = info[0].As<Napi::Number>().Int32Value();
  if (pid <= 0) throw Napi::RangeError::New(env, "bad pid");
  FdCloser pidfd{int(syscall(SYS_pidfd_open, pid, 0))};
  if (pidfd.fd < 0) throw Napi::Error::New(env, "pidfd_open(" + std::to_string(pid) + "): " + strerror(errno));
  std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  DIR* d = opendir(dir.c_str());
  if (!d) throw Napi::Error::New(env, "opendir(" + dir + "): " + strerror(errno));
  int sockets = 0, released = 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    char link[64];
    ssize_t n = readlink((dir + "/" + e->d_name).c_str(), link, sizeof(link) - 1);
    if (n <= 0) continue;
    link[n] = 0;
    if (strncmp(link, "socket:[", 8) != 0) continue;
    FdCloser fd{int(syscall(SYS_pidfd_getfd, pidfd.fd, atoi(e->d_name), 0))};
    if (fd.fd < 0) continue;  // closed meanwhile
    int v = 0;
    socklen_t len = sizeof(v);
    if (getsockopt(fd.fd, SOL_SOCKET, SO_PROTOCOL, &v, &len) != 0 || v != IPPROTO_TCP) continue;
    sockets++;
    len = sizeof(v);
    if (getsockopt(fd.fd, SOL_TCP, TCP_REPAIR, &v, &len) != 0 || v == 0) continue;
    int off = 0;  // TCP_REPAIR_OFF
    if (setsockopt(fd.fd, SOL_TCP, TCP_REPAIR, &off, sizeof(off)) == 0) released++;
  }
  closedir(d);
  Napi::Object out = Napi::Object::New(env);
  out.Set("sockets", sockets);
  out.Set("released", released);
  return out;
}

}  // namespace

void InitTcpRepair(Napi::Env env, Napi::Object exports) {
  exports.Set("tcpRepairOff", Napi::Function::New(env, TcpRepairOff, "tcpRepairOff"));
}

}  // namespace phaul
