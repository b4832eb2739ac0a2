// Socket options Node does not expose. TCP_USER_TIMEOUT bounds how long data
// may stay unacknowledged before the kernel drops the connection: keepalive
// probes only run on an idle connection, so without it a peer that vanished
// while we were sending (a partition) is noticed only when retransmissions
// give up, ~15 minutes later.
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>

#include <string>

#include "modules.h"

namespace phaul {
namespace {

// setTcpUserTimeout(fd, ms): throws with errno's text on failure.
Napi::Value SetTcpUserTimeout(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) {
    throw Napi::TypeError::New(env, "setTcpUserTimeout(fd, ms)");
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  int64_t ms = info[1].As<Napi::Number>().Int64Value();
  if (fd < 0 || ms < 0 || ms > 0x7fffffff) throw Napi::RangeError::New(env, "setTcpUserTimeout: bad fd or timeout");
  unsigned int v = static_cast<unsigned int>(ms);
  if (setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &v, sizeof(v)) != 0) {
    int err = errno;
    throw Napi::Error::New(env, std::string("setsockopt(TCP_USER_TIMEOUT): ") + strerror(err));
  }
  return env.Undefined();
}

}  // namespace

void InitSocketOpts(Napi::Env env, Napi::Object exports) {
  exports.Set("setTcpUserTimeout", Napi::Function::New(env, SetTcpUserTimeout));
}

}  // namespace phaul
