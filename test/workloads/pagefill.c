// pagefill MIB RESULTFILE
//
// Test workload for page transfer: fills MIB MiB of private anonymous memory
// (plus 4 MiB of shared anonymous memory, which CRIU dumps as a shmem pagemap)
// with a per-page pattern derived from a random seed, leaving every 17th page
// untouched so the dump has holes. Then writes "READY <pid>" to RESULTFILE and
// waits. On SIGUSR1 it checks every page (pattern, or zero for the untouched
// ones) and writes "OK <pages>" or "BAD <page index>" to RESULTFILE, then
// exits. The seed lives only in the process's memory, so a restore from wrong
// or misplaced pages cannot pass. Results are written to a temp file and
// renamed, so a reader never sees half a line.
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define SHARED_MIB 4

static uint64_t seed;

static uint64_t word(uint64_t region, uint64_t page, uint64_t i) {
  uint64_t x = seed ^ (region << 56) ^ (page * 0x9e3779b97f4a7c15ull) ^ i;
  x ^= x >> 31;
  return x * 0xbf58476d1ce4e5b9ull;
}

static void fill(uint64_t *mem, uint64_t pages, uint64_t region) {
  for (uint64_t p = 0; p < pages; p++) {
    if (p % 17 == 16) continue;  // leave a hole: never touched, not dumped
    uint64_t *w = mem + p * (PAGE / 8);
    for (uint64_t i = 0; i < PAGE / 8; i++) w[i] = word(region, p, i);
  }
}

// Returns the index of the first bad page, or -1.
static long check(const uint64_t *mem, uint64_t pages, uint64_t region) {
  for (uint64_t p = 0; p < pages; p++) {
    const uint64_t *w = mem + p * (PAGE / 8);
    for (uint64_t i = 0; i < PAGE / 8; i++)
      if (w[i] != (p % 17 == 16 ? 0 : word(region, p, i))) return (long)p;
  }
  return -1;
}

static void report(const char *path, const char *line) {
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  if (!f) exit(3);
  fputs(line, f);
  if (fclose(f) != 0 || rename(tmp, path) != 0) exit(3);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: pagefill MIB RESULTFILE\n");
    return 2;
  }
  uint64_t pages = strtoull(argv[1], NULL, 10) * (1 << 20) / PAGE;
  uint64_t spages = SHARED_MIB * (1 << 20) / PAGE;
  const char *result = argv[2];

  // Run as our own session leader: CRIU refuses to dump a tree whose session
  // leader lies outside its pid namespace (we are pid 1 of one, under unshare).
  setsid();

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  sigprocmask(SIG_BLOCK, &set, NULL);

  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  seed = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 40);

  uint64_t *priv = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  uint64_t *shared = mmap(NULL, spages * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (priv == MAP_FAILED || shared == MAP_FAILED) {
    perror("mmap");
    return 1;
  }
  fill(priv, pages, 1);
  fill(shared, spages, 2);

  char line[128];
  snprintf(line, sizeof line, "READY %d\n", (int)getpid());
  report(result, line);

  for (;;) {
    int sig = sigwaitinfo(&set, NULL);
    if (sig != SIGUSR1) continue;
    long bad = check(priv, pages, 1);
    long sbad = bad < 0 ? check(shared, spages, 2) : -1;
    if (bad >= 0)
      snprintf(line, sizeof line, "BAD private page %ld\n", bad);
    else if (sbad >= 0)
      snprintf(line, sizeof line, "BAD shared page %ld\n", sbad);
    else
      snprintf(line, sizeof line, "OK %llu\n", (unsigned long long)(pages + spages));
    report(result, line);
    return 0;
  }
}
