// A workload that changes its shape while it is being migrated, and can prove
// afterwards that none of its memory was lost: `churnwork REPORT_DIR`.
//
// Every page it owns carries {magic, region id, page index, generation} and a
// body derived from them; generations live in per-region arrays in its own
// memory, so a restored copy checks its pages against the state it migrated
// with. On SIGUSR2 it starts churning: forks a child (which then writes its own
// private region and its half of a shared mapping), and keeps mapping,
// unmapping, growing (mremap) and brk-extending regions while writing. One
// region holds data behind PROT_NONE (sealed: process_vm_readv cannot read it,
// /proc/PID/mem can); churning unseals it, writes and seals it again. Another
// is a private mapping of a file in REPORT_DIR, written to it first through a
// shared mapping: its pages are the file's until written, then its own. On
// SIGUSR1 each process verifies all of its memory and writes
// REPORT_DIR/report-<role>.json ({"ok", "pages", "bad", "seq", ...}) through a
// temporary file and rename.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define MAGIC 0x43485552u /* CHUR */
#define MAX_REGIONS 16
#define FIXED_REGIONS 4 /* main, shared, sealed, file: never unmapped or grown */

struct region {
  uint8_t* base;
  size_t pages;
  uint32_t* gen;  // generation per page (private memory of this process)
  uint32_t id;
  int shared_stride;  // shared region: this process owns pages i % 2 == shared_stride
  int sealed;         // PROT_NONE now (its pages hold data all the same)
};

static struct region regions[MAX_REGIONS];
static int nregions;
static volatile sig_atomic_t want_report, want_churn;
static const char* dir;
static const char* role = "parent";
static unsigned seq;
static uint64_t rng = 88172645463325252ull;

static uint64_t next_rand(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static void fill(struct region* r, size_t i) {
  uint32_t* p = (uint32_t*)(r->base + i * PAGE);
  uint32_t g = r->gen[i];
  p[0] = MAGIC;
  p[1] = r->id;
  p[2] = (uint32_t)i;
  p[3] = g;
  uint32_t x = r->id * 2654435761u ^ (uint32_t)i * 40503u ^ g * 2246822519u;
  for (size_t k = 4; k < PAGE / 4; k++) {
    x = x * 1664525u + 1013904223u;
    p[k] = x;
  }
}

static int check(struct region* r, size_t i) {
  uint32_t* p = (uint32_t*)(r->base + i * PAGE);
  uint32_t g = r->gen[i];
  if (p[0] != MAGIC || p[1] != r->id || p[2] != (uint32_t)i || p[3] != g) return 0;
  uint32_t x = r->id * 2654435761u ^ (uint32_t)i * 40503u ^ g * 2246822519u;
  for (size_t k = 4; k < PAGE / 4; k++) {
    x = x * 1664525u + 1013904223u;
    if (p[k] != x) return 0;
  }
  return 1;
}

static void seal(struct region* r, int on) {
  if (mprotect(r->base, r->pages * PAGE, on ? PROT_NONE : PROT_READ | PROT_WRITE) == 0) r->sealed = on;
}

static int owns(struct region* r, size_t i) { return r->shared_stride < 0 || (int)(i % 2) == r->shared_stride; }

static struct region* add_region(uint8_t* base, size_t pages, int shared_stride) {
  if (nregions == MAX_REGIONS) return NULL;
  static uint32_t next_id = 1;
  struct region* r = &regions[nregions++];
  r->base = base;
  r->pages = pages;
  r->gen = calloc(pages, sizeof(uint32_t));
  r->id = next_id++;
  r->shared_stride = shared_stride;
  r->sealed = 0;
  for (size_t i = 0; i < pages; i++)
    if (owns(r, i)) fill(r, i);
  return r;
}

static void drop_region(int k) {
  munmap(regions[k].base, regions[k].pages * PAGE);
  free(regions[k].gen);
  regions[k] = regions[--nregions];
}

static void write_some(int n) {
  for (int j = 0; j < n && nregions; j++) {
    struct region* r = &regions[next_rand() % nregions];
    size_t i = next_rand() % r->pages;
    if (!owns(r, i) || r->sealed) continue;
    r->gen[i]++;
    fill(r, i);
  }
}

static void report(void) {
  size_t pages = 0, bad = 0;
  for (int k = 0; k < nregions; k++) {
    int sealed = regions[k].sealed;
    if (sealed) mprotect(regions[k].base, regions[k].pages * PAGE, PROT_READ);  // to check it, then sealed again
    for (size_t i = 0; i < regions[k].pages; i++)
      if (owns(&regions[k], i)) {
        pages++;
        if (!check(&regions[k], i)) bad++;
      }
    if (sealed) mprotect(regions[k].base, regions[k].pages * PAGE, PROT_NONE);
  }
  char path[4096], tmp[4200];
  snprintf(path, sizeof(path), "%s/report-%s.json", dir, role);
  snprintf(tmp, sizeof(tmp), "%s.tmp", path);
  FILE* f = fopen(tmp, "w");
  if (!f) return;
  fprintf(f, "{\"ok\":%s,\"pages\":%zu,\"bad\":%zu,\"regions\":%d,\"seq\":%u,\"pid\":%d}\n", bad ? "false" : "true",
          pages, bad, nregions, ++seq, getpid());
  fclose(f);
  rename(tmp, path);
}

static void on_usr1(int s) { (void)s; want_report = 1; }
static void on_usr2(int s) { (void)s; want_churn = 1; }

static void child_loop(void) {
  role = "child";
  seq = 0;
  // Keep only the shared region (our half of it) and a private one of our own.
  for (int k = nregions - 1; k >= 0; k--) {
    if (regions[k].shared_stride >= 0) regions[k].shared_stride = 1;
    else { free(regions[k].gen); regions[k] = regions[--nregions]; }  // parent's memory: not ours to check
  }
  // The shared pages we now own hold the parent's view of generation 0 for odd pages: refill.
  for (int k = 0; k < nregions; k++)
    for (size_t i = 1; i < regions[k].pages; i += 2) fill(&regions[k], i);
  uint8_t* mine = mmap(NULL, 8 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  add_region(mine, (8 << 20) / PAGE, -1);
  for (;;) {
    if (want_report) { want_report = 0; report(); }
    write_some(64);
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: churnwork REPORT_DIR\n");
    return 2;
  }
  dir = argv[1];
  setsid();
  struct sigaction sa = {0};
  sa.sa_handler = on_usr1;
  sigaction(SIGUSR1, &sa, NULL);
  sa.sa_handler = on_usr2;
  sigaction(SIGUSR2, &sa, NULL);
  int nul = open("/dev/null", O_RDWR);
  if (nul >= 0) { dup2(nul, 0); dup2(nul, 1); dup2(nul, 2); if (nul > 2) close(nul); }

  uint8_t* main_region = mmap(NULL, 64 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  add_region(main_region, (64 << 20) / PAGE, -1);
  uint8_t* shared = mmap(NULL, 8 << 20, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  add_region(shared, (8 << 20) / PAGE, 0);  // even pages ours; odd pages the child's once it exists
  uint8_t* hidden = mmap(NULL, 2 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  struct region* sealed = add_region(hidden, (2 << 20) / PAGE, -1);
  seal(sealed, 1);
  // The file's content is the region's generation 0 (written through a shared
  // mapping), then mapped privately in its place: unwritten pages are the file's.
  char fpath[4096];
  snprintf(fpath, sizeof(fpath), "%s/churn-file.bin", dir);
  int fd = open(fpath, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || ftruncate(fd, 1 << 20) != 0) return 3;
  uint8_t* fshared = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  struct region* filed = fshared == MAP_FAILED ? NULL : add_region(fshared, (1 << 20) / PAGE, -1);
  if (!filed || msync(fshared, 1 << 20, MS_SYNC) != 0) return 3;
  munmap(fshared, 1 << 20);
  filed->base = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  close(fd);
  if (filed->base == MAP_FAILED) return 3;
  report();

  pid_t child = -1;
  unsigned long it = 0;
  for (;;) {
    if (want_report) {
      want_report = 0;
      if (child > 0) kill(child, SIGUSR1);
      report();
    }
    write_some(256);
    if (want_churn) {
      if (child < 0) {
        child = fork();
        if (child == 0) child_loop();
      }
      if (it % 20 == 0) {  // a new mapping, filled
        size_t pages = 256 + next_rand() % 768;
        uint8_t* m = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m != MAP_FAILED && !add_region(m, pages, -1)) munmap(m, pages * PAGE);
      }
      if (it % 20 == 10 && nregions > FIXED_REGIONS + 2) drop_region(FIXED_REGIONS + next_rand() % (nregions - FIXED_REGIONS));  // unmap one
      if (it % 40 == 15) {  // the sealed region opened, written, sealed again
        seal(sealed, 0);
        for (int j = 0; j < 16; j++) {
          size_t i = next_rand() % sealed->pages;
          sealed->gen[i]++;
          fill(sealed, i);
        }
        seal(sealed, 1);
      }
      if (it % 30 == 5 && nregions > FIXED_REGIONS) {  // grow one, maybe moving it
        struct region* r = &regions[FIXED_REGIONS + next_rand() % (nregions - FIXED_REGIONS)];
        size_t grow = 128;
        uint8_t* m = mremap(r->base, r->pages * PAGE, (r->pages + grow) * PAGE, MREMAP_MAYMOVE);
        if (m != MAP_FAILED) {
          uint32_t* g = realloc(r->gen, (r->pages + grow) * sizeof(uint32_t));
          if (g) {
            memset(g + r->pages, 0, grow * sizeof(uint32_t));
            r->gen = g;
            r->base = m;
            for (size_t i = r->pages; i < r->pages + grow; i++) r->gen[i] = 0;
            size_t old = r->pages;
            r->pages += grow;
            for (size_t i = old; i < r->pages; i++) fill(r, i);
          }
        }
      }
      if (it % 50 == 25) {  // heap growth through brk
        uint8_t* b = sbrk(64 * PAGE);
        if (b != (void*)-1) memset(b, 0x5a, 64 * PAGE);  // content not checked: exercises a growing VMA
      }
    }
    it++;
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
}
