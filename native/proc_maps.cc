#include "proc_maps.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

namespace phaul {
namespace dirty {

bool ReadAll(const std::string& path, std::string* out, int* err) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *err = errno;
    return false;
  }
  out->clear();
  size_t cap = 1 << 16;
  for (;;) {
    size_t old = out->size();
    out->resize(old + cap);
    ssize_t n = read(fd, &(*out)[old], cap);
    if (n < 0 && errno == EINTR) {
      out->resize(old);
      continue;
    }
    if (n <= 0) {
      out->resize(old);
      if (n < 0) {
        *err = errno;
        close(fd);
        return false;
      }
      break;
    }
    out->resize(old + size_t(n));
  }
  close(fd);
  return true;
}

static bool IsSpecialName(const std::string& n) {
  return n == "[vdso]" || n == "[vvar]" || n == "[vvar_vclock]" || n == "[vsyscall]" || n == "[uprobes]";
}

bool ParseVmaLine(const char* p, const char* end, Vma* v) {
  char* q;
  v->start = strtoull(p, &q, 16);
  if (*q != '-') return false;
  v->end = strtoull(q + 1, &q, 16);
  if (*q != ' ' || q + 5 > end) return false;
  const char* perms = q + 1;
  v->flags = 0;
  if (perms[0] == 'r') v->flags |= kVmaRead;
  if (perms[1] == 'w') v->flags |= kVmaWrite;
  if (perms[2] == 'x') v->flags |= kVmaExec;
  if (perms[3] == 's') v->flags |= kVmaShared;
  v->offset = strtoull(perms + 5, &q, 16);
  while (*q == ' ') q++;
  while (*q && *q != ' ') q++;  // dev
  v->inode = strtoull(q, &q, 10);
  while (q < end && *q == ' ') q++;
  v->name.assign(q, size_t(end - q));
  if (v->inode) v->flags |= kVmaFile;
  if (IsSpecialName(v->name)) v->flags |= kVmaSpecial;
  return v->end > v->start;
}

}  // namespace dirty
}  // namespace phaul
