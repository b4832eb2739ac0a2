// A tree that forks all the time, for migrations whose switchover comes
// between a fork and the next scan: `forkwork REPORT_FILE`.
//
// Every ~20 ms the parent rewrites 16 pages of its own memory with a new
// generation number and forks a child. The child fills 64 pages of fresh
// private memory with a pattern derived from its pid, then checks them, and
// the 16 pages it inherited (still at the generation of its fork, whatever the
// parent wrote since), every 10 ms for ~0.3 s, and exits 0 if every check
// passed, 3 otherwise. The parent checks its own 16 pages before each rewrite,
// reaps the children and counts them and the failures (its own, and a child's
// exit 3 or death by a signal); on SIGUSR1 it writes
// {"ok":..., "children":N, "bad":N, "seq":N} to REPORT_FILE (temporary file and
// rename). So a child forked right before a freeze must come through the
// migration with its own memory and its copy of its parent's, or it reports a
// failure.
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGES 64
#define INHERITED 16
#define PAGE 4096

static volatile sig_atomic_t want_report;
static void on_usr1(int s) { (void)s; want_report = 1; }

static void nap(long ns) {
  struct timespec t = {0, ns};
  while (nanosleep(&t, &t) != 0 && errno == EINTR) {
  }
}

static uint64_t word(uint64_t seed, size_t i) { return (seed << 32) ^ (i * 0x9e3779b97f4a7c15ull); }

// The parent's pages every child inherits, and the generation they hold.
static uint64_t* inherited;
static uint64_t generation;

static int child(void) {
  pid_t me = getpid();
  uint64_t gen = generation;
  uint64_t* mem = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return 4;
  size_t n = PAGES * PAGE / sizeof(uint64_t), m = INHERITED * PAGE / sizeof(uint64_t);
  for (size_t i = 0; i < n; i++) mem[i] = word((uint64_t)me, i);
  for (int round = 0; round < 30; round++) {
    for (size_t i = 0; i < n; i++)
      if (mem[i] != word((uint64_t)me, i)) return 3;
    for (size_t i = 0; i < m; i++)
      if (inherited[i] != word(gen, i)) return 3;
    nap(10 * 1000 * 1000);
  }
  return 0;
}

static void report(const char* path, unsigned long children, unsigned long bad, unsigned long seq) {
  char tmp[4096];
  snprintf(tmp, sizeof(tmp), "%s.tmp", path);
  FILE* f = fopen(tmp, "w");
  if (!f) return;
  fprintf(f, "{\"ok\":%s,\"children\":%lu,\"bad\":%lu,\"seq\":%lu}\n", bad ? "false" : "true", children, bad, seq);
  fclose(f);
  rename(tmp, path);
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: forkwork REPORT_FILE\n");
    return 2;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_usr1;
  sigaction(SIGUSR1, &sa, NULL);
  inherited = mmap(NULL, INHERITED * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (inherited == MAP_FAILED) return 4;
  unsigned long children = 0, bad = 0, seq = 0;
  report(argv[1], 0, 0, seq++);
  size_t m = INHERITED * PAGE / sizeof(uint64_t);
  for (;;) {
    // Its own copy first: still the generation it wrote before its last nap.
    for (size_t i = 0; generation && i < m; i++)
      if (inherited[i] != word(generation, i)) {
        bad++;
        break;
      }
    generation++;
    for (size_t i = 0; i < m; i++) inherited[i] = word(generation, i);
    pid_t p = fork();
    if (p == 0) _exit(child());
    if (p > 0) children++;
    int st;
    pid_t r;
    while ((r = waitpid(-1, &st, WNOHANG)) > 0)
      if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) bad++;
    if (want_report) {
      want_report = 0;
      report(argv[1], children, bad, seq++);
    }
    nap(20 * 1000 * 1000);
  }
}
