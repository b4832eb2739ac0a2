/*
 * Workload for the dirty-tracker tests: writer threads that write pages in a
 * known, recorded way, and a line protocol on stdin/stdout to pause them, dump
 * what they wrote, change the address space, fork and verify memory.
 *
 *   dirtyload PAGES THREADS RATE
 *     PAGES    data pages (4 KiB) in one private anonymous region
 *     THREADS  writer threads (0: none; use the "dirty" command)
 *     RATE     writes per second per thread (0: as fast as possible)
 *
 * Page p of the data region: u64[0] = p, u64[1] = generation (bumped by every
 * write), u64[2..9] = mix(p, generation, i). A page is consistent when its
 * words agree; "verify" checks every page of every region it made.
 *
 * Commands (one line each, one reply line each):
 *   pause        stop writers; reply "ok <hex bitmap of data pages written since the last pause>"
 *   resume       restart writers
 *   dirty S      write every S-th data page once (writers paused or not)
 *   gens         reply "ok <generation of each data page, comma-separated hex>"
 *   mmap N       new private anonymous region of N pages, all written; "ok <addr>"
 *   munmap A N   unmap N pages at A
 *   mremap A N M grow/move a region made by mmap to M pages (MREMAP_MAYMOVE),
 *                write the new tail; "ok <new addr>"
 *   brk N        grow the heap by N pages with sbrk and write them; "ok <addr>"
 *   dontneed A N MADV_DONTNEED N pages at A (they read back as zeros)
 *   protect A N P mprotect N pages at A: P 0 = PROT_NONE (data kept), 1 = read-write
 *   fork         fork a child that runs its own writers on its copy; "ok <child pid in our ns>"
 *   uffd         create a userfaultfd and register the data region (MISSING mode off: WP)
 *   verify       check every page of every region; "ok <pages>" or "bad <first bad addr>"
 *   quit         exit 0
 * Prints "ready <data addr hex> <pages>" first.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define MAX_REGIONS 64

static uint8_t *data;
static size_t npages;
static int nthreads;
static long rate;
static uint64_t *written; /* bitmap of data pages written since the last pause */
static volatile int pause_req;
static volatile int parked;
static volatile int quit_req;

struct region { uint8_t *addr; size_t pages; };
static struct region regions[MAX_REGIONS];
static int nregions;

static uint64_t mix(uint64_t p, uint64_t gen, uint64_t i) {
  uint64_t x = p * 0x9E3779B97F4A7C15ULL ^ (gen + 0x632BE59BD9B4E019ULL) * 0xBF58476D1CE4E5B9ULL ^ i * 0x94D049BB133111EBULL;
  x ^= x >> 31;
  x *= 0xD6E8FEB86659FD93ULL;
  return x ^ (x >> 29);
}

/* Writes one page (index p of its region) with generation gen. */
static void write_page(uint8_t *page, uint64_t p, uint64_t gen) {
  uint64_t *w = (uint64_t *)page;
  for (int i = 2; i < 10; i++) w[i] = mix(p, gen, i);
  w[0] = p;
  __atomic_store_n(&w[1], gen, __ATOMIC_RELEASE);
}

static int check_page(const uint8_t *page, uint64_t p) {
  const uint64_t *w = (const uint64_t *)page;
  if (w[0] != p) return 0;
  for (int i = 2; i < 10; i++)
    if (w[i] != mix(p, w[1], i)) return 0;
  return 1;
}

static void bump(size_t p) {
  uint8_t *page = data + p * PAGE;
  uint64_t gen = ((uint64_t *)page)[1] + 1;
  write_page(page, p, gen);
  __atomic_fetch_or(&written[p / 64], 1ULL << (p % 64), __ATOMIC_RELAXED);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *writer(void *arg) {
  long t = (long)arg;
  uint64_t x = 0x12345678ULL + (uint64_t)t * 7919;
  double start = now();
  long done = 0;
  while (!quit_req) {
    if (pause_req) {
      __atomic_fetch_add(&parked, 1, __ATOMIC_SEQ_CST);
      while (pause_req && !quit_req) usleep(200);
      __atomic_fetch_sub(&parked, 1, __ATOMIC_SEQ_CST);
      continue;
    }
    /* thread t owns pages p with p % nthreads == t: no two writers race on a page */
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    size_t owned = (npages - (size_t)t + (size_t)nthreads - 1) / (size_t)nthreads;
    if (!owned) break;
    size_t p = (size_t)t + (x % owned) * (size_t)nthreads;
    bump(p);
    done++;
    if (rate > 0 && done % 16 == 0) {
      double ahead = (double)done / rate - (now() - start);
      if (ahead > 0) usleep((useconds_t)(ahead * 1e6));
    }
  }
  return NULL;
}

static void pause_writers(void) {
  pause_req = 1;
  __sync_synchronize();
  while (__atomic_load_n(&parked, __ATOMIC_SEQ_CST) < nthreads) usleep(50);
  __sync_synchronize();
}

static void add_region(uint8_t *a, size_t pages) {
  if (nregions < MAX_REGIONS) regions[nregions].addr = a, regions[nregions].pages = pages, nregions++;
}

static struct region *find_region(uint8_t *a) {
  for (int i = 0; i < nregions; i++)
    if (regions[i].addr == a) return &regions[i];
  return NULL;
}

static void fill(uint8_t *a, size_t from, size_t to) {
  for (size_t i = from; i < to; i++) write_page(a + i * PAGE, i, 1);
}

static void reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void reply(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  putchar('\n');
  fflush(stdout);
}

static pthread_t threads[64];

static void start_writers(void) {
  for (long t = 0; t < nthreads; t++) pthread_create(&threads[t], NULL, writer, (void *)t);
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: dirtyload PAGES THREADS RATE\n");
    return 2;
  }
  npages = strtoul(argv[1], NULL, 0);
  nthreads = atoi(argv[2]);
  rate = atol(argv[3]);
  if (nthreads > 64) nthreads = 64;
  /* die with our parent (the unshare process) so a crashed test leaves nothing */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  data = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  written = calloc((npages + 63) / 64, 8);
  if (data == MAP_FAILED || !written) return 1;
  for (size_t p = 0; p < npages; p++) write_page(data + p * PAGE, p, 1);
  add_region(data, npages);
  start_writers();
  reply("ready %lx %zu", (unsigned long)data, npages);

  char line[256];
  while (fgets(line, sizeof line, stdin)) {
    char cmd[32] = {0};
    unsigned long a1 = 0, a2 = 0, a3 = 0;
    sscanf(line, "%31s %lx %lx %lx", cmd, &a1, &a2, &a3);
    if (!strcmp(cmd, "pause")) {
      pause_writers();
      size_t words = (npages + 63) / 64;
      char *hex = malloc(words * 16 + 1), *q = hex;
      for (size_t i = 0; i < words; i++) q += sprintf(q, "%016lx", (unsigned long)written[i]);
      memset(written, 0, words * 8);
      reply("ok %s", hex);
      free(hex);
    } else if (!strcmp(cmd, "resume")) {
      pause_req = 0;
      reply("ok");
    } else if (!strcmp(cmd, "dirty")) {
      /* the stride is decimal */
      unsigned long s = strtoul(line + 6, NULL, 10);
      int was = pause_req;
      if (!was) pause_writers();
      for (size_t p = 0; p < npages; p += s ? s : 1) bump(p);
      if (!was) pause_req = 0;
      reply("ok");
    } else if (!strcmp(cmd, "gens")) {
      for (size_t p = 0; p < npages; p++) printf("%s%lx", p ? "," : "ok ", (unsigned long)((uint64_t *)(data + p * PAGE))[1]);
      reply("%s", "");
    } else if (!strcmp(cmd, "mmap")) {
      uint8_t *a = mmap(NULL, a1 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (a == MAP_FAILED) { reply("err %d", errno); continue; }
      fill(a, 0, a1);
      add_region(a, a1);
      reply("ok %lx", (unsigned long)a);
    } else if (!strcmp(cmd, "munmap")) {
      struct region *r = find_region((uint8_t *)a1);
      munmap((void *)a1, a2 * PAGE);
      if (r) r->pages = 0;
      reply("ok");
    } else if (!strcmp(cmd, "mremap")) {
      struct region *r = find_region((uint8_t *)a1);
      uint8_t *a = mremap((void *)a1, a2 * PAGE, a3 * PAGE, MREMAP_MAYMOVE);
      if (a == MAP_FAILED || !r) { reply("err %d", errno); continue; }
      fill(a, a2, a3);
      r->addr = a, r->pages = a3;
      reply("ok %lx", (unsigned long)a);
    } else if (!strcmp(cmd, "brk")) {
      uint8_t *a = sbrk((intptr_t)(a1 * PAGE));
      if (a == (void *)-1) { reply("err %d", errno); continue; }
      /* sbrk returns the old break, which need not be page-aligned */
      uint8_t *al = (uint8_t *)(((uintptr_t)a + PAGE - 1) & ~(PAGE - 1));
      size_t n = a1 - (al != a);
      fill(al, 0, n);
      add_region(al, n);
      reply("ok %lx", (unsigned long)al);
    } else if (!strcmp(cmd, "protect")) {
      if (mprotect((void *)a1, a2 * PAGE, a3 ? PROT_READ | PROT_WRITE : PROT_NONE)) { reply("err %d", errno); continue; }
      reply("ok");
    } else if (!strcmp(cmd, "dontneed")) {
      struct region *r = find_region((uint8_t *)a1);
      madvise((void *)a1, a2 * PAGE, MADV_DONTNEED);
      if (r) r->pages = 0; /* zeros now: not a consistent region any more */
      reply("ok");
    } else if (!strcmp(cmd, "fork")) {
      int was = pause_req;
      if (!was) pause_writers();
      fflush(stdout);
      pid_t c = fork();
      if (c == 0) {
        /* the child: only the forking thread survives; restart writers on our copy */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        parked = 0;
        pause_req = 0;
        memset(written, 0, (npages + 63) / 64 * 8);
        start_writers();
        for (;;) pause();
      }
      if (!was) pause_req = 0;
      reply("ok %d", (int)c);
    } else if (!strcmp(cmd, "uffd")) {
      int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
      struct uffdio_api api = {.api = UFFD_API};
      if (fd < 0 || ioctl(fd, UFFDIO_API, &api)) { reply("err %d", errno); continue; }
      /* hold it; registration left out on purpose: having one is enough */
      reply("ok %d", fd);
    } else if (!strcmp(cmd, "verify")) {
      int was = pause_req;
      if (!was) pause_writers();
      size_t n = 0;
      uint8_t *bad = NULL;
      for (int i = 0; i < nregions && !bad; i++)
        for (size_t p = 0; p < regions[i].pages; p++, n++)
          if (!check_page(regions[i].addr + p * PAGE, p)) { bad = regions[i].addr + p * PAGE; break; }
      if (!was) pause_req = 0;
      if (bad) reply("bad %lx", (unsigned long)bad); else reply("ok %zu", n);
    } else if (!strcmp(cmd, "quit")) {
      quit_req = 1;
      pause_req = 0;
      reply("ok");
      break;
    } else {
      reply("err unknown command");
    }
  }
  quit_req = 1;
  for (int t = 0; t < nthreads; t++) pthread_join(threads[t], NULL);
  return 0;
}
