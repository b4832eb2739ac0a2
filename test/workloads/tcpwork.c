// A two-process workload with an established TCP connection between them, for
// migration tests: `tcpwork REPORT_FILE [PORT]`.
//
// Run it in fresh pid and network namespaces: it brings `lo` up, forks a server
// that echoes every 8-byte counter it receives, and the client (the namespace's
// init) sends counters 1, 2, 3, ... checking each echo. On SIGUSR1 the client
// writes {"ok":..., "exchanged":N, "serverAlive":...} to REPORT_FILE (via a
// temporary file and rename, never held open). Any mismatch, reset or EOF is
// recorded as ok:false with the reason.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t want_report;
static void on_usr1(int s) { (void)s; want_report = 1; }

static void lo_up(void) {
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  struct ifreq ifr;
  memset(&ifr, 0, sizeof(ifr));
  strcpy(ifr.ifr_name, "lo");
  if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    ioctl(s, SIOCSIFFLAGS, &ifr);
  }
  close(s);
}

static int full(int fd, void* buf, size_t n, int rd) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = rd ? read(fd, (char*)buf + done, n - done) : write(fd, (char*)buf + done, n - done);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    done += r;
  }
  return 0;
}

static void report(const char* path, int ok, uint64_t n, pid_t server, const char* why) {
  char tmp[4096];
  snprintf(tmp, sizeof(tmp), "%s.tmp", path);
  FILE* f = fopen(tmp, "w");
  if (!f) return;
  int alive = server > 0 && kill(server, 0) == 0;
  fprintf(f, "{\"ok\":%s,\"exchanged\":%llu,\"serverAlive\":%s,\"why\":\"%s\"}\n", ok ? "true" : "false",
          (unsigned long long)n, alive ? "true" : "false", why);
  fclose(f);
  rename(tmp, path);
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: tcpwork REPORT_FILE [PORT]\n");
    return 2;
  }
  const char* path = argv[1];
  setsid();  // a session of its own, inside the namespace CRIU dumps
  int port = argc > 2 ? atoi(argv[2]) : 7777;
  lo_up();
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(ls, (struct sockaddr*)&a, sizeof(a)) || listen(ls, 1)) {
    perror("tcpwork: listen");
    return 1;
  }
  // Listening: let go of the launcher's stdio (a pipe to a process outside
  // the tree, which CRIU would refuse to dump).
  int nul = open("/dev/null", O_RDWR);
  if (nul >= 0) {
    dup2(nul, 0);
    dup2(nul, 1);
    dup2(nul, 2);
    if (nul > 2) close(nul);
  }
  pid_t server = fork();
  if (server == 0) {
    int c = accept(ls, NULL, NULL);
    close(ls);
    uint64_t v;
    while (full(c, &v, sizeof(v), 1) == 0)
      if (full(c, &v, sizeof(v), 0)) break;
    _exit(0);
  }
  close(ls);
  int c = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(c, (struct sockaddr*)&a, sizeof(a))) {
    perror("tcpwork: connect");
    return 1;
  }
  setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  struct sigaction sa = {0};
  sa.sa_handler = on_usr1;
  sigaction(SIGUSR1, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
  uint64_t n = 0;
  int ok = 1;
  const char* why = "";
  report(path, 1, 0, server, "started");
  for (;;) {
    if (want_report) {
      want_report = 0;
      report(path, ok, n, server, why);
    }
    if (!ok) {
      pause();
      continue;
    }
    uint64_t v = n + 1, back = 0;
    if (full(c, &v, sizeof(v), 0) || full(c, &back, sizeof(back), 1)) {
      ok = 0;
      why = errno == EINTR ? "interrupted" : "connection broken";
      continue;
    }
    if (back != v) {
      ok = 0;
      why = "echo mismatch";
      continue;
    }
    n = v;
    struct timespec ts = {0, 2 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
}
