// A process that uses userfaultfd itself (as some runtimes do): it registers
// its own memory for write-protect tracking and keeps writing to it. Used to
// check that phaul-fast's pre-copy steps aside for it.
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int main(void) {
  setsid();
  size_t len = 4 << 20;
  char* m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  memset(m, 1, len);
  int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) { perror("uffdwork: userfaultfd"); return 1; }
  struct uffdio_api api = {.api = UFFD_API};
  if (ioctl(fd, UFFDIO_API, &api)) { perror("uffdwork: UFFDIO_API"); return 1; }
  struct uffdio_register reg = {.range = {.start = (unsigned long)m, .len = len}, .mode = UFFDIO_REGISTER_MODE_MISSING};
  if (ioctl(fd, UFFDIO_REGISTER, &reg)) { perror("uffdwork: UFFDIO_REGISTER"); return 1; }
  int nul = open("/dev/null", O_RDWR);
  dup2(nul, 0); dup2(nul, 1); dup2(nul, 2);
  for (unsigned long i = 0;; i++) {
    m[(i * 4096) % len]++;
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
}
