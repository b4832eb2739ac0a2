/*
 * memwork: the self-verifying memory workload for tests and benchmarks.
 *
 *   memwork --mib N --report FILE [--write-mbps R] [--threads T]
 *
 * Fills N MiB of private anonymous memory with content that can be checked
 * page by page (a header {magic, index, generation} plus words derived from
 * index and generation), then keeps rewriting pages at R MB/s (10^6 bytes)
 * spread over the whole buffer, bumping each page's generation. The expected
 * generation of every page lives in a separate small array, so a full check
 * needs nothing but the process's own memory: after a migration, a SIGUSR1
 * proves that every page arrived intact.
 *
 * The main loop wakes about every millisecond and records the longest gap
 * between two iterations: that is the pause the workload itself experienced,
 * e.g. while frozen for a migration. The gap is taken on CLOCK_REALTIME, not
 * CLOCK_MONOTONIC: CRIU restores into a new time namespace whose offsets make
 * the monotonic clock continue from its value at dump time, which hides most
 * of the pause (a 2 s wait between dump and restore showed as a 30 ms gap).
 * Time namespaces do not virtualize CLOCK_REALTIME. Should the realtime clock
 * step backwards (NTP), that one gap falls back to the monotonic clock.
 *
 *   SIGUSR1  verify all pages, write a report, continue
 *   SIGUSR2  reset maxGapMs
 *
 * Report (JSON, written to FILE.tmp and renamed, never held open: CRIU refuses
 * to restore a process whose open files changed size since the dump):
 *   {"ok":..,"pages":..,"badPages":..,"firstBad":..,"maxGapMs":..,
 *    "iterations":..,"seq":..,"addr":"0x.."}   (addr: the buffer, for tests
 *    that corrupt a page on purpose)
 * One report (seq 1) is written after the initial fill: the ready signal.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define WORDS (PAGE / 8)
#define MAGIC 0x6d656d776f726b21ULL /* "memwork!" */

static uint8_t *buf;
static uint32_t *gens;        /* expected generation of each page */
static uint64_t npages;
static uint64_t stride;       /* coprime with npages: consecutive writes land far apart */
static const char *report_path;
static volatile sig_atomic_t want_report, want_reset;

static uint64_t seed_of(uint64_t idx, uint32_t gen) {
  uint64_t z = idx * 0x9E3779B97F4A7C15ULL ^ ((uint64_t)gen + 1) * 0xD1B54A32D192ED03ULL;
  z ^= z >> 31;
  return z;
}

/* Word i of a page is seed + i * odd constant, rotated: every word differs
 * from its neighbours and from the same word of any other page or
 * generation, and the loop vectorizes (a serial PRNG chain checked only
 * ~1 GB/s, which made verifying a 4 GiB workload take seconds). */
static inline uint64_t word(uint64_t s, int i) {
  uint64_t x = s + (uint64_t)i * 0xBF58476D1CE4E5B9ULL;
  return x ^ (x >> 29);
}

static void fill_page(uint64_t idx, uint32_t gen) {
  uint64_t *w = (uint64_t *)(buf + idx * PAGE);
  uint64_t s = seed_of(idx, gen);
  w[0] = MAGIC; w[1] = idx; w[2] = gen;
  for (int i = 3; i < WORDS; i++) w[i] = word(s, i);
}

static int page_ok(uint64_t idx) {
  const uint64_t *w = (const uint64_t *)(buf + idx * PAGE);
  uint32_t gen = gens[idx];
  if (w[0] != MAGIC || w[1] != idx || w[2] != gen) return 0;
  uint64_t s = seed_of(idx, gen), diff = 0;
  for (int i = 3; i < WORDS; i++) diff |= w[i] ^ word(s, i); /* no early exit: vectorizes */
  return diff == 0;
}

static void write_page(uint64_t seqno) {
  uint64_t idx = (seqno % npages) * stride % npages;
  uint32_t g = gens[idx] + 1;
  fill_page(idx, g);
  gens[idx] = g;
}

static double clock_ms(clockid_t c) {
  struct timespec ts;
  clock_gettime(c, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}
static double now_ms(void) { return clock_ms(CLOCK_REALTIME); }
static double mono_ms(void) { return clock_ms(CLOCK_MONOTONIC); }

static uint64_t gcd(uint64_t a, uint64_t b) { while (b) { uint64_t t = a % b; a = b; b = t; } return a; }

static void on_usr1(int s) { (void)s; want_report = 1; }
static void on_usr2(int s) { (void)s; want_reset = 1; }

static void die(const char *msg) { fprintf(stderr, "memwork: %s\n", msg); exit(2); }

/* MEMWORK_TRACE=FILE (for measuring): the slow iterations since the last
 * report (a gap over 3 ms or writes over 2 ms: realtime at the wake-up, gap,
 * pages written, ms writing them) are appended to FILE as a JSON line at each
 * report; opened and closed there, never held open (CRIU). */
static const char *trace_path;
static struct { double t, gap, ms; uint64_t n; } slow[256];
static unsigned nslow;

static void write_trace(void) {
  FILE *f = trace_path ? fopen(trace_path, "a") : NULL;
  if (f) {
    fprintf(f, "[");
    for (unsigned i = 0; i < nslow && i < 256; i++)
      fprintf(f, "%s[%.3f,%.3f,%llu,%.3f]", i ? "," : "", slow[i].t, slow[i].gap, (unsigned long long)slow[i].n, slow[i].ms);
    fprintf(f, "]\n");
    fclose(f);
  }
  nslow = 0;
}

static void write_report(double max_gap, double max_gap_end, uint64_t iterations, uint64_t seq) {
  uint64_t bad = 0; int64_t first = -1;
  for (uint64_t i = 0; i < npages; i++)
    if (!page_ok(i)) { if (first < 0) first = (int64_t)i; bad++; }
  char tmp[4096];
  if (snprintf(tmp, sizeof tmp, "%s.tmp", report_path) >= (int)sizeof tmp) die("report path too long");
  FILE *f = fopen(tmp, "w");
  if (!f) return; /* keep running: the driver times out and says so */
  fprintf(f, "{\"ok\":%s,\"pages\":%llu,\"badPages\":%llu,\"firstBad\":%lld,\"maxGapMs\":%.3f,"
             "\"maxGapEndMs\":%.0f,\"iterations\":%llu,\"seq\":%llu,\"addr\":\"%p\"}\n",
          bad ? "false" : "true", (unsigned long long)npages, (unsigned long long)bad,
          (long long)first, max_gap, max_gap_end, (unsigned long long)iterations, (unsigned long long)seq, (void *)buf);
  fclose(f);
  rename(tmp, report_path);
}

/* Writer threads (T > 1): the main thread hands each a slice of the write
 * sequence per iteration between two barriers, so a verification never races
 * a writer and the gap is still measured in one place. */
static pthread_barrier_t go, done;
static uint64_t slice_start, slice_len;
static int nthreads;

static void *writer(void *arg) {
  long k = (long)arg;
  for (;;) {
    pthread_barrier_wait(&go);
    uint64_t per = slice_len / nthreads, extra = slice_len % nthreads;
    uint64_t from = slice_start + k * per + ((uint64_t)k < extra ? (uint64_t)k : extra);
    uint64_t n = per + ((uint64_t)k < extra);
    for (uint64_t i = 0; i < n; i++) write_page(from + i);
    pthread_barrier_wait(&done);
  }
  return NULL;
}

static long parse_num(const char *v, const char *name, long min, long max) {
  char *end; errno = 0;
  long n = v ? strtol(v, &end, 10) : 0;
  if (!v || errno || *end || end == v || n < min || n > max) {
    char m[160];
    snprintf(m, sizeof m, "--%s needs a whole number between %ld and %ld", name, min, max);
    die(m);
  }
  return n;
}

int main(int argc, char **argv) {
  long mib = 0, mbps = 0; nthreads = 1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--mib")) { mib = parse_num(v, "mib", 1, 1L << 20); i++; }
    else if (!strcmp(a, "--write-mbps")) { mbps = parse_num(v, "write-mbps", 0, 1000000); i++; }
    else if (!strcmp(a, "--threads")) { nthreads = (int)parse_num(v, "threads", 1, 64); i++; }
    else if (!strcmp(a, "--report")) { if (!v) die("--report needs a file"); report_path = v; i++; }
    else { char m[200]; snprintf(m, sizeof m, "unknown argument '%.100s' (usage: memwork --mib N --report FILE [--write-mbps R] [--threads T])", a); die(m); }
  }
  trace_path = getenv("MEMWORK_TRACE");
  if (!mib || !report_path) die("usage: memwork --mib N --report FILE [--write-mbps R] [--threads T]");

  npages = (uint64_t)mib * (1024 * 1024 / PAGE);
  buf = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  gens = calloc(npages, sizeof *gens);
  if (buf == MAP_FAILED || !gens) die("out of memory");
  stride = (npages * 618034 / 1000000) | 1;
  while (gcd(stride, npages) != 1) stride += 2;

  /* A session of its own: as the init of a fresh pid namespace this process
   * is not a group leader, so this succeeds and CRIU sees the session inside
   * the dumped tree. */
  setsid();

  struct sigaction sa = {0};
  sa.sa_handler = on_usr1; sigaction(SIGUSR1, &sa, NULL);
  sa.sa_handler = on_usr2; sigaction(SIGUSR2, &sa, NULL);

  for (uint64_t i = 0; i < npages; i++) fill_page(i, 0);

  /* From here on the driver learns everything through reports; detach stdio
   * so that no pipe to the launcher has to be checkpointed. */
  int nul = open("/dev/null", O_RDWR);
  if (nul >= 0) { dup2(nul, 0); dup2(nul, 1); dup2(nul, 2); if (nul > 2) close(nul); }

  pthread_t th[64];
  if (nthreads > 1) {
    pthread_barrier_init(&go, NULL, nthreads + 1);
    pthread_barrier_init(&done, NULL, nthreads + 1);
    for (long k = 0; k < nthreads; k++) pthread_create(&th[k], NULL, writer, (void *)k);
  }

  double pages_per_ms = mbps * 1e6 / PAGE / 1e3, credit = 0, max_gap = 0, max_gap_end = 0;
  uint64_t seqno = 0, iterations = 0, reports = 0;
  write_report(0, 0, 0, ++reports);
  double prev = now_ms(), prev_mono = mono_ms();
  struct timespec nap = {0, 1000000};
  for (;;) {
    nanosleep(&nap, NULL);
    double t = now_ms(), tm = mono_ms(), gap = t - prev;
    if (gap < 0) gap = tm - prev_mono;
    prev = t;
    prev_mono = tm;
    iterations++;
    if (gap > max_gap) { max_gap = gap; max_gap_end = t; }
    if (want_reset) { want_reset = 0; max_gap = 0; max_gap_end = 0; nslow = 0; }
    if (want_report) {
      want_report = 0;
      if (trace_path) write_trace();
      write_report(max_gap, max_gap_end, iterations, ++reports);
      prev = now_ms(); /* the check's own time is not a stall */
      prev_mono = mono_ms();
      continue;
    }
    if (!pages_per_ms) continue;
    /* Catch up at most 50 ms after a stall, so the burst after a migration
     * does not itself look like a second stall. */
    credit += pages_per_ms * (gap < 50 ? gap : 50);
    uint64_t n = (uint64_t)credit;
    credit -= n;
    if (!n) continue;
    if (nthreads > 1) {
      slice_start = seqno; slice_len = n;
      pthread_barrier_wait(&go);
      pthread_barrier_wait(&done);
    } else {
      for (uint64_t i = 0; i < n; i++) write_page(seqno + i);
    }
    seqno += n;
    if (trace_path) {
      double ms = now_ms() - t;
      if ((gap > 3 || ms > 2) && nslow < 256) { slow[nslow].t = t; slow[nslow].gap = gap; slow[nslow].n = n; slow[nslow].ms = ms; nslow++; }
    }
  }
}
