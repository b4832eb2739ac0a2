/*
 * fillrace: a process that hands its own memory to the lazy-pages server
 * (native/lazy_fill.cc) the way `criu restore --lazy-pages` does, then reads,
 * zaps and forks over it from several threads while the server fills it, and
 * checks every page it sees. It stands in for CRIU's restore only; the
 * userfaultfd, the faults and the kernel's events are real.
 *
 *   fillrace data FILE PAGES
 *     writes the data of the pages the "images" hold to FILE (packed) and
 *     prints {"addr":..,"extents":[[start,end,off],..]} (bytes) on stdout
 *   fillrace run SOCK PAGES THREADS REPORT
 *     maps PAGES pages at the same address, registers them (missing mode,
 *     with the fork, remap, remove and unmap events), sends the userfaultfd
 *     on SOCK as image id 1 followed by "restore finished", and then:
 *     THREADS readers check random pages and random 64-page runs of the
 *     first 7/8; one thread zaps (MADV_DONTNEED), rewrites and checks runs
 *     of the last 1/8; one forks four times, each child checking the
 *     readers' part. Once all are done every page is checked again. Report (JSON):
 *     {"ok":..,"bad":..,"firstBad":..,"checked":..,"zaps":..,"forks":..,"childBad":..}
 *
 * A page the images hold reads its pattern until zapped, zeros after a zap
 * until rewritten, then the rewrite's pattern; a page they do not hold reads
 * zeros. Old data on a zapped page, or zeros on a held one, is a bad page.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGE 4096UL
#define WORDS (PAGE / 8)
#define BASE 0x200000000000UL
#define RESTORE_FINISHED 0x52535446U
#define FORKS 4

static uint64_t npages, zap_from;
static uint8_t *mem;
static _Atomic uint32_t *state; /* zap region: generation; 0 = the images' data, odd = zapped, even > 0 = rewritten */
static _Atomic uint64_t bad, first_bad = UINT64_MAX, checked;

/* Runs of 16 pages, one run in 7 left out: holes answered with zero pages. */
static int held(uint64_t i) { return ((i >> 4) * 2654435761u) % 7 != 0; }

static uint64_t word(uint64_t i, uint64_t w, uint32_t gen) {
  uint64_t z = (i * WORDS + w + 1) * 0x9E3779B97F4A7C15ULL ^ ((uint64_t)gen * 0xD1B54A32D192ED03ULL);
  return z ^ (z >> 29);
}

static void fill_page(uint64_t *p, uint64_t i, uint32_t gen) {
  for (uint64_t w = 0; w < WORDS; w++) p[w] = word(i, w, gen);
}

static uint64_t rnd(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

static void note_bad(uint64_t i) {
  bad++;
  uint64_t cur = first_bad;
  while (i < cur &&
         !__atomic_compare_exchange_n((uint64_t *)&first_bad, &cur, i, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
  }
}

/* Checks page i against generation gen (0: the images' data or zeros; odd: zeros). */
static int page_ok(uint64_t i, uint32_t gen) {
  const uint64_t *p = (const uint64_t *)(mem + i * PAGE);
  checked++;
  int zero = gen % 2 == 1 || (gen == 0 && !held(i));
  for (uint64_t w = 0; w < WORDS; w++)
    if (p[w] != (zero ? 0 : word(i, w, gen))) return 0;
  return 1;
}

static void *reader(void *arg) {
  uint64_t s = (uintptr_t)arg * 0x2545F4914F6CDD1DULL + 88172645463325252ULL;
  for (int k = 0; k < 3000; k++) {
    uint64_t i = rnd(&s) % zap_from;
    uint64_t n = k % 4 == 0 ? 64 : 1; /* random pages, and runs that cross background claims */
    for (uint64_t j = i; j < i + n && j < zap_from; j++)
      if (!page_ok(j, 0)) note_bad(j);
  }
  return NULL;
}

static uint64_t zaps;
static void *zapper(void *arg) {
  (void)arg;
  uint64_t s = 0x1234567;
  for (int k = 0; k < 1500; k++) {
    uint64_t i = zap_from + rnd(&s) % (npages - zap_from);
    uint64_t n = 1 + rnd(&s) % 32;
    if (i + n > npages) n = npages - i;
    switch (rnd(&s) % 3) {
      case 0:
        for (uint64_t j = i; j < i + n; j++)
          if (!page_ok(j, state[j - zap_from])) note_bad(j);
        break;
      case 1:
        if (madvise(mem + i * PAGE, n * PAGE, MADV_DONTNEED)) note_bad(i);
        for (uint64_t j = i; j < i + n; j++) state[j - zap_from] += state[j - zap_from] % 2 ? 2 : 1;
        zaps++;
        break;
      default:
        for (uint64_t j = i; j < i + n; j++) {
          uint32_t g = state[j - zap_from] + (state[j - zap_from] % 2 ? 1 : 2);
          fill_page((uint64_t *)(mem + j * PAGE), j, g);
          state[j - zap_from] = g;
        }
    }
  }
  return NULL;
}

static int forks, child_bad;
static void *forker(void *arg) {
  (void)arg;
  for (int f = 0; f < FORKS; f++) {
    /* The first at once, amid the readers' first faults: a fork read in one batch with faults is a case of its own. */
    if (f) usleep(5000);
    pid_t c = fork();
    if (c == 0) {
      /* The child (one thread) checks the readers' part, which nothing rewrites. */
      uint64_t nbad = 0;
      for (uint64_t i = 0; i < zap_from; i++) {
        if (!page_ok(i, 0)) {
          if (!nbad) {
            const uint64_t *p = (const uint64_t *)(mem + i * PAGE);
            uint64_t w = 0;
            while (w < WORDS && p[w] == (held(i) ? word(i, w, 0) : 0)) w++;
            fprintf(stderr, "fillrace: child %d: page %lu (held %d) word %lu reads %#lx\n", f, (unsigned long)i,
                    held(i), (unsigned long)w, (unsigned long)p[w]);
          }
          nbad++;
        }
      }
      _exit(nbad ? 1 : 0);
    }
    if (c < 0) continue;
    int st = 0;
    waitpid(c, &st, 0);
    forks++;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      fprintf(stderr, "fillrace: child %d ended with status %#x\n", f, st);
      child_bad++;
    }
  }
  return NULL;
}

static int data(const char *file) {
  int fd = open(file, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0) return perror("fillrace: data file"), 1;
  uint64_t page[WORDS], off = 0;
  printf("{\"addr\":%lu,\"extents\":[", BASE);
  int first = 1;
  for (uint64_t i = 0; i < npages;) {
    if (!held(i)) {
      i++;
      continue;
    }
    uint64_t j = i;
    for (; j < npages && held(j); j++) {
      fill_page(page, j, 0);
      if (write(fd, page, PAGE) != (ssize_t)PAGE) return perror("fillrace: write"), 1;
    }
    printf("%s[%lu,%lu,%lu]", first ? "" : ",", BASE + i * PAGE, BASE + j * PAGE, off);
    first = 0;
    off += (j - i) * PAGE;
    i = j;
  }
  printf("]}\n");
  return close(fd) ? 1 : 0;
}

static int hand_over(const char *sock_path, int uffd) {
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  strncpy(sa.sun_path, sock_path, sizeof(sa.sun_path) - 1);
  if (s < 0 || connect(s, (struct sockaddr *)&sa, sizeof(sa))) return perror("fillrace: connect"), -1;
  int32_t id = 1;
  if (write(s, &id, 4) != 4) return -1;
  char dummy = 0;
  struct iovec iov = {&dummy, 1};
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } cm;
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf, .msg_controllen = sizeof(cm.buf)};
  struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &uffd, sizeof(int));
  if (sendmsg(s, &mh, 0) != 1) return perror("fillrace: sendmsg"), -1;
  uint32_t fin = RESTORE_FINISHED;
  if (write(s, &fin, 4) != 4) return -1;
  close(s);
  return 0;
}

static int run(const char *sock_path, int threads, const char *report) {
  mem = mmap((void *)BASE, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1,
             0);
  if (mem != (uint8_t *)BASE) return perror("fillrace: mmap"), 1;
  state = calloc(npages - zap_from, sizeof(*state));
  int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  if (uffd < 0) return perror("fillrace: userfaultfd"), 1;
  struct uffdio_api api = {.api = UFFD_API,
                           .features = UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE |
                                       UFFD_FEATURE_EVENT_UNMAP};
  if (ioctl(uffd, UFFDIO_API, &api)) return perror("fillrace: UFFDIO_API"), 1;
  struct uffdio_register reg = {.range = {.start = BASE, .len = npages * PAGE}, .mode = UFFDIO_REGISTER_MODE_MISSING};
  if (ioctl(uffd, UFFDIO_REGISTER, &reg)) return perror("fillrace: UFFDIO_REGISTER"), 1;
  if (hand_over(sock_path, uffd)) return 1;
  close(uffd);
  pthread_t t[34];
  int n = 0;
  for (int k = 0; k < threads && k < 32; k++) pthread_create(&t[n++], NULL, reader, (void *)(uintptr_t)(k + 1));
  pthread_create(&t[n++], NULL, zapper, NULL);
  pthread_create(&t[n++], NULL, forker, NULL);
  for (int k = 0; k < n; k++) pthread_join(t[k], NULL);
  for (uint64_t i = 0; i < npages; i++)
    if (!page_ok(i, i < zap_from ? 0 : state[i - zap_from])) note_bad(i);
  FILE *f = fopen(report, "w");
  if (!f) return perror("fillrace: report"), 1;
  fprintf(f, "{\"ok\":%s,\"bad\":%lu,\"firstBad\":%ld,\"checked\":%lu,\"zaps\":%lu,\"forks\":%d,\"childBad\":%d}\n",
          bad == 0 && child_bad == 0 ? "true" : "false", (unsigned long)bad,
          first_bad == UINT64_MAX ? -1L : (long)first_bad, (unsigned long)checked, (unsigned long)zaps, forks,
          child_bad);
  return fclose(f) ? 1 : 0;
}

int main(int argc, char **argv) {
  if (argc >= 4 && !strcmp(argv[1], "data")) {
    npages = strtoull(argv[3], NULL, 0);
    return data(argv[2]);
  }
  if (argc >= 6 && !strcmp(argv[1], "run")) {
    npages = strtoull(argv[3], NULL, 0);
    zap_from = npages - npages / 8;
    return run(argv[2], atoi(argv[4]), argv[5]);
  }
  fprintf(stderr, "usage: fillrace data FILE PAGES | fillrace run SOCK PAGES THREADS REPORT\n");
  return 2;
}
