// A zero-copy relay between CRIU's page-server client and our TCP data
// connection: CRIU writes into one end of a unix socketpair, and a thread
// splices socket -> pipe -> socket in both directions.
//
// Why not hand the TCP socket to CRIU directly: CRIU corks its page-server
// socket (TCP_CORK) and sends its final CLOSE while corked, so the last segment
// waits for the kernel's 200 ms cork timer while the workload is frozen. On a
// unix socket TCP_CORK is a no-op, and our TCP socket runs with TCP_NODELAY, so
// each message CRIU finishes leaves at once. Page data still never passes
// through user space.
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <string>

#include "modules.h"
#include "thread_job.h"

namespace phaul {
namespace {

struct Pipe {
  int r = -1, w = -1;
  size_t held = 0;  // bytes sitting in the pipe, not yet spliced out
  bool Open() {
    int p[2];
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) return false;
    r = p[0];
    w = p[1];
    // Bigger pipes mean fewer splice calls per page batch.
    long max = 1 << 20;
    FILE* f = fopen("/proc/sys/fs/pipe-max-size", "r");
    if (f) {
      if (fscanf(f, "%ld", &max) != 1) max = 1 << 20;
      fclose(f);
    }
    if (max > (16 << 20)) max = 16 << 20;
    fcntl(w, F_SETPIPE_SZ, (int)max);
    return true;
  }
  ~Pipe() {
    if (r >= 0) close(r);
    if (w >= 0) close(w);
  }
};

// Moves bytes both ways between CRIU's end of a socketpair (local) and the
// TCP socket until CRIU is done, the peer goes away, or the wake-up pipe
// fires. Runs on a thread of its own (thread_job.h); owns the three fds.
class Relay {
 public:
  Relay(int local, int tcp, int wake) : local_(local), tcp_(tcp), wake_(wake) {}
  ~Relay() {
    close(local_);
    close(tcp_);
    close(wake_);
  }
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;

  // Empty on success, else what failed.
  std::string Run() {
    Pipe up, down;  // up: CRIU -> network, down: network -> CRIU
    if (!up.Open() || !down.Open()) return std::string("pipe: ") + strerror(errno);
    bool local_eof = false, tcp_eof = false;
    for (;;) {
      if (local_eof && up.held == 0) break;  // CRIU is done and everything it wrote has left
      if (tcp_eof && down.held == 0 && !local_eof) {
        // The destination went away while CRIU still talks: end CRIU's side so it fails fast.
        break;
      }
      struct pollfd p[3] = {{local_, 0, 0}, {tcp_, 0, 0}, {wake_, POLLIN, 0}};
      if (!local_eof && up.held == 0) p[0].events |= POLLIN;
      if (down.held) p[0].events |= POLLOUT;
      if (!tcp_eof && down.held == 0) p[1].events |= POLLIN;
      if (up.held) p[1].events |= POLLOUT;
      int n = poll(p, 3, -1);
      if (n < 0) {
        if (errno == EINTR) continue;
        return std::string("poll: ") + strerror(errno);
      }
      if (p[2].revents) return "relay aborted";
      std::string err = Move(local_, up, tcp_, &local_eof, &up_bytes_);
      if (err.empty()) err = Move(tcp_, down, local_, &tcp_eof, &down_bytes_);
      if (!err.empty()) return err;
    }
    shutdown(tcp_, SHUT_WR);
    shutdown(local_, SHUT_RDWR);
    return "";
  }

  uint64_t up_bytes() const { return up_bytes_; }
  uint64_t down_bytes() const { return down_bytes_; }

 private:
  // Pulls what is readable from `from` into the pipe, then pushes what the pipe
  // holds into `to`. Both non-blocking; EAGAIN just means "later".
  std::string Move(int from, Pipe& p, int to, bool* eof, uint64_t* total) {
    if (!*eof && p.held == 0) {
      ssize_t n = splice(from, nullptr, p.w, nullptr, 1 << 30, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n == 0)
        *eof = true;
      else if (n > 0)
        p.held += n;
      else if (errno == ECONNRESET)
        *eof = true;
      else if (errno != EAGAIN && errno != EINTR)
        return std::string("relay read: ") + strerror(errno);
    }
    while (p.held) {
      ssize_t n = splice(p.r, nullptr, to, nullptr, p.held, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) {
        p.held -= n;
        *total += n;
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
      return std::string("relay write: ") + (n == 0 ? "closed" : strerror(errno));
    }
    return "";
  }

  int local_, tcp_, wake_;
  uint64_t up_bytes_ = 0, down_bytes_ = 0;
};

// startRelay(tcpFd) -> { criuFd, done: Promise<{sent, received}>, abortFd }
// Takes ownership of tcpFd. criuFd is the caller's to pass to CRIU and close.
Napi::Value StartRelay(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int tcp = info[0].ToNumber().Int32Value();
  int sv[2], wake[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
    throw Napi::Error::New(env, std::string("socketpair: ") + strerror(errno));
  if (pipe2(wake, O_CLOEXEC) < 0) {
    close(sv[0]);
    close(sv[1]);
    throw Napi::Error::New(env, std::string("pipe: ") + strerror(errno));
  }
  int one = 1;
  setsockopt(tcp, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  fcntl(tcp, F_SETFL, fcntl(tcp, F_GETFL) | O_NONBLOCK);
  fcntl(sv[1], F_SETFL, fcntl(sv[1], F_GETFL) | O_NONBLOCK);
  struct Outcome {
    std::string error;
  };
  auto relay = std::make_shared<Relay>(sv[1], tcp, wake[0]);
  auto out = std::make_shared<Outcome>();
  Napi::Promise done;
  try {
    done = ThreadJob::Start(
        env, "phaul-splice-relay", [relay, out] { out->error = relay->Run(); },
        [relay, out](Napi::Env env) -> Napi::Value {
          if (!out->error.empty()) throw Napi::Error::New(env, out->error);
          Napi::Object o = Napi::Object::New(env);
          o.Set("sent", Napi::Number::New(env, double(relay->up_bytes())));
          o.Set("received", Napi::Number::New(env, double(relay->down_bytes())));
          return o;
        });
  } catch (...) {
    close(sv[0]);
    close(wake[1]);
    throw;  // relay's destructor closes the rest
  }
  Napi::Object r = Napi::Object::New(env);
  r.Set("criuFd", sv[0]);
  r.Set("abortFd", wake[1]);
  r.Set("done", done);
  return r;
}

// abortRelay(abortFd): wakes the relay thread and makes it fail.
Napi::Value AbortRelay(const Napi::CallbackInfo& info) {
  int fd = info[0].ToNumber().Int32Value();
  char c = 1;
  if (write(fd, &c, 1) < 0) { /* already ended */
  }
  close(fd);
  return info.Env().Undefined();
}

}  // namespace

void InitSpliceRelay(Napi::Env env, Napi::Object exports) {
  exports.Set("startRelay", Napi::Function::New(env, StartRelay));
  exports.Set("abortRelay", Napi::Function::New(env, AbortRelay));
}

}  // namespace phaul
