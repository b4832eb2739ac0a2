// libFuzzer harness for the page server's protocol parser (page_server.cc):
// each input is what a peer sends on the data connection. The server runs on
// one end of an AF_UNIX socketpair, as in production (the splice path
// included), writing images into a scratch tmpfs directory that is emptied
// after every input. A crash, a hang (libFuzzer -timeout) or a leak of a
// descriptor (checked here) is a finding; a Fail is the expected outcome of
// bad input. Built and run by scripts/fuzz.sh.
#include "../page_server.cc"

#include <dirent.h>
#include <stdlib.h>
#include <sys/stat.h>


namespace {

// scripts/fuzz.sh makes the scratch directory (on tmpfs) and removes it after the run.
std::string ScratchDir() {
  const char* dir = getenv("PHAUL_FUZZ_SCRATCH");
  if (!dir || !*dir) {
    fprintf(stderr, "PHAUL_FUZZ_SCRATCH must name an empty scratch directory (scripts/fuzz.sh sets it)\n");
    abort();
  }
  return dir;
}

void EmptyDir(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (!d) abort();
  while (dirent* e = readdir(d))
    if (e->d_name[0] != '.') unlinkat(dirfd(d), e->d_name, 0);
  closedir(d);
}

int CountFds() {
  int n = 0;
  DIR* d = opendir("/proc/self/fd");
  while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = ScratchDir();
  const int baseFds = CountFds();
  // The first byte picks the header size (CRIU 4.1: 24, 4.2: 32).
  if (size < 1) return 0;
  int headerSize = (data[0] & 1) ? 32 : 24;
  data++;
  size--;

  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) abort();
  // The peer writes everything, then closes: the server sees EOF after it.
  std::thread writer([fd = sv[1], data, size] {
    size_t off = 0;
    while (off < size) {
      ssize_t w = send(fd, data + off, size - off, MSG_NOSIGNAL);
      if (w <= 0) break;  // the server closed on an error
      off += size_t(w);
    }
    shutdown(fd, SHUT_WR);
    // Drain replies so the server never blocks on a full buffer.
    char buf[4096];
    while (recv(fd, buf, sizeof buf, 0) > 0) {}
    close(fd);
  });
  {
    auto st = std::make_shared<phaul::SockState>();
    st->fd = sv[0];
    phaul::Options o;
    o.headerSize = headerSize;
    o.maxBytes = 64ull << 20;  // the scratch tmpfs is not the limit under test
    o.idleTimeoutMs = 5000;
    try {
      phaul::Session s(st, dir, o);
      s.Run();
    } catch (const phaul::Fail&) {
      // Refused: what bad input must get.
    }
    close(sv[0]);  // the real server's owner closes it too (Worker)
  }
  writer.join();
  EmptyDir(dir);
  if (CountFds() != baseFds) {
    fprintf(stderr, "descriptor leak: %d open, %d before\n", CountFds(), baseFds);
    abort();
  }
  return 0;
}
