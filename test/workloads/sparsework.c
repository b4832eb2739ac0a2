/*
 * sparsework: a mostly untouched writable mapping, for tests of what a
 * migration makes resident at the destination.
 *
 *   sparsework MIB TOUCHED_MIB REPORT
 *
 * Maps MIB MiB of private anonymous read-write memory, writes a checkable
 * pattern into the first TOUCHED_MIB MiB and never touches the rest, then keeps
 * rewriting touched pages (bumping a counter in each). On SIGUSR1 it takes its
 * VmRSS first, then checks every touched page and that the untouched rest
 * reads as zeros, and writes {"ok":..,"bad":..,"rssKiB":..,"restPresent":..,
 * "seq":..} to REPORT (via REPORT.tmp and a rename, never held open).
 *
 * The check must not change what it measures: on a kernel booted with
 * pvm_no_zero_page=1 reading an untouched anonymous page allocates it (there
 * is no shared zero page to map), so a plain read of the rest would make the
 * whole mapping resident. The rest is checked through /proc/self/pagemap: a
 * page neither present nor swapped has never been populated and reads as
 * zero by definition; only populated pages (restPresent of them) are read. A report (seq 1) is written once the pattern is in
 * place: the ready signal. It calls setsid() itself (CRIU wants the tree's
 * session leader inside the tree) and moves its stdio to /dev/null.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t want_report;
static void on_usr1(int s) { (void)s; want_report = 1; }

static long rss_kib(void) {
  FILE* f = fopen("/proc/self/status", "r");
  char line[256];
  long v = -1;
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "VmRSS: %ld", &v) == 1) break;
  if (f) fclose(f);
  return v;
}

static void report(const char* path, int ok, long bad, long rss, long rest_present, int seq) {
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE* f = fopen(tmp, "w");
  if (!f) return;
  fprintf(f, "{\"ok\":%s,\"bad\":%ld,\"rssKiB\":%ld,\"restPresent\":%ld,\"seq\":%d}\n", ok ? "true" : "false", bad, rss,
          rest_present, seq);
  fclose(f);
  rename(tmp, path);
}

/* Pages of [p, p+len) that are present or swapped (populated), from /proc/self/pagemap; -1 if unreadable. */
#define PM_PRESENT (1ULL << 63)
#define PM_SWAPPED (1ULL << 62)
static long check_rest(const unsigned char* p, size_t len, long* bad) {
  int fd = open("/proc/self/pagemap", O_RDONLY);
  if (fd < 0) return -1;
  long present = 0;
  uint64_t ent[512];
  for (size_t off = 0; off < len; off += sizeof ent / sizeof ent[0] * 4096) {
    size_t n = (len - off) / 4096;
    if (n > sizeof ent / sizeof ent[0]) n = sizeof ent / sizeof ent[0];
    off_t at = (off_t)(((uintptr_t)p + off) / 4096 * sizeof(uint64_t));
    if (pread(fd, ent, n * sizeof(uint64_t), at) != (ssize_t)(n * sizeof(uint64_t))) { close(fd); return -1; }
    for (size_t i = 0; i < n; i++) {
      if (!(ent[i] & (PM_PRESENT | PM_SWAPPED))) continue;  // never populated: reads as zero
      present++;
      const unsigned char* pg = p + off + i * 4096;
      for (size_t b = 0; b < 4096; b++)
        if (pg[b]) { (*bad)++; break; }
    }
  }
  close(fd);
  return present;
}

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: sparsework MIB TOUCHED_MIB REPORT\n");
    return 2;
  }
  size_t mib = strtoul(argv[1], 0, 10), touched = strtoul(argv[2], 0, 10);
  if (mib == 0 || touched > mib) {
    fprintf(stderr, "sparsework: need 0 < TOUCHED_MIB <= MIB\n");
    return 2;
  }
  setsid();
  // Our stdio may be the launcher's pipes (unix sockets to outside the tree): CRIU would refuse them.
  int nul = open("/dev/null", O_RDWR);
  if (nul >= 0) { dup2(nul, 0); dup2(nul, 1); dup2(nul, 2); if (nul > 2) close(nul); }
  size_t len = mib << 20, tlen = touched << 20, pages = tlen / 4096;
  uint64_t* p = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return 1;
  uint64_t* gen = calloc(pages, sizeof *gen);
  for (size_t i = 0; i < pages; i++) p[i * 512] = i << 20, p[i * 512 + 1] = 0;
  signal(SIGUSR1, on_usr1);
  int seq = 1;
  report(argv[3], 1, 0, rss_kib(), 0, seq);
  for (uint64_t n = 0;; n++) {
    size_t i = (n * 7919) % pages;
    p[i * 512 + 1] = ++gen[i];
    if (want_report) {
      want_report = 0;
      long rss = rss_kib();  // before any check reads memory
      long bad = 0;
      for (size_t k = 0; k < pages; k++)
        if (p[k * 512] != k << 20 || p[k * 512 + 1] != gen[k]) bad++;
      long rest_present = check_rest((const unsigned char*)p + tlen, len - tlen, &bad);
      if (rest_present < 0) bad++;  // could not check: never report ok
      report(argv[3], bad == 0, bad, rss, rest_present, ++seq);
    }
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, 0);
  }
}
