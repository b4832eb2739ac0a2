// Dirty tracker core (uffd-wp async + PAGEMAP_SCAN) and its N-API binding.
// The recipe, its costs and its edge cases are in design.md section 3; the
// comments here say why the code deviates or adds to it.
#include "dirty_tracker.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kcmp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>

#include "modules.h"
#include "syscall_inject.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

namespace phaul {
namespace dirty {

using inject::NowNs;

static void Fail(Failure* f, const char* code, const std::string& msg, int err = 0) {
  f->code = code;
  f->message = msg;
  f->err = err;
}

static std::string Errno(int e) { return std::string(strerror(e)); }

// ---------------------------------------------------------------- Intervals
void Intervals::Add(uint64_t s, uint64_t e) {
  if (s >= e) return;
  std::vector<std::pair<uint64_t, uint64_t>> out;
  out.reserve(v_.size() + 1);
  bool placed = false;
  for (auto& iv : v_) {
    if (iv.second < s) {
      out.push_back(iv);
    } else if (iv.first > e) {
      if (!placed) out.emplace_back(s, e), placed = true;
      out.push_back(iv);
    } else {
      s = std::min(s, iv.first);
      e = std::max(e, iv.second);
    }
  }
  if (!placed) out.emplace_back(s, e);
  v_.swap(out);
}

void Intervals::Subtract(uint64_t s, uint64_t e) {
  if (s >= e) return;
  std::vector<std::pair<uint64_t, uint64_t>> out;
  out.reserve(v_.size() + 1);
  for (auto& iv : v_) {
    if (iv.second <= s || iv.first >= e) {
      out.push_back(iv);
      continue;
    }
    if (iv.first < s) out.emplace_back(iv.first, s);
    if (iv.second > e) out.emplace_back(e, iv.second);
  }
  v_.swap(out);
}

void Intervals::IntersectWith(const Intervals& o) {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  size_t i = 0, j = 0;
  while (i < v_.size() && j < o.v_.size()) {
    uint64_t s = std::max(v_[i].first, o.v_[j].first), e = std::min(v_[i].second, o.v_[j].second);
    if (s < e) out.emplace_back(s, e);
    if (v_[i].second < o.v_[j].second)
      i++;
    else
      j++;
  }
  v_.swap(out);
}

Intervals Intervals::Minus(const Intervals& o) const {
  Intervals r = *this;
  for (auto& iv : o.v_) r.Subtract(iv.first, iv.second);
  return r;
}

bool Intervals::Covers(uint64_t s, uint64_t e) const {
  for (auto& iv : v_)
    if (iv.first <= s && e <= iv.second) return true;
  return false;
}

bool Intervals::Overlaps(uint64_t s, uint64_t e) const {
  for (auto& iv : v_)
    if (iv.first < e && s < iv.second) return true;
  return false;
}

bool Intervals::NextFrom(uint64_t pos, uint64_t* s, uint64_t* e) const {
  for (auto& iv : v_) {
    if (iv.second <= pos) continue;
    *s = std::max(iv.first, pos);
    *e = iv.second;
    return true;
  }
  return false;
}

uint64_t Intervals::Bytes() const {
  uint64_t b = 0;
  for (auto& iv : v_) b += iv.second - iv.first;
  return b;
}

// ---------------------------------------------------------------- /proc parsing
static bool ReadAll(const std::string& path, std::string* out, int* err) {
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

// Parses one maps/smaps header line "start-end perms offset dev inode name".
static bool ParseVmaLine(const char* p, const char* end, Vma* v) {
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
  if (v->name == "[heap]") v->flags |= kVmaHeap;
  if (v->name.compare(0, 6, "[stack") == 0) v->flags |= kVmaStack;
  return v->end > v->start;
}

static bool Accessible(const Vma& v) { return v.flags & (kVmaRead | kVmaWrite | kVmaExec); }

bool Tracker::ReadMaps(std::vector<Vma>* out, Failure* f) {
  std::string s;
  int err = 0;
  if (!ReadAll("/proc/" + std::to_string(pid_) + "/maps", &s, &err)) {
    Fail(f, "process-gone", "cannot read /proc/" + std::to_string(pid_) + "/maps: " + Errno(err), err);
    return false;
  }
  out->clear();
  size_t pos = 0;
  while (pos < s.size()) {
    size_t eol = s.find('\n', pos);
    if (eol == std::string::npos) eol = s.size();
    Vma v;
    if (ParseVmaLine(s.c_str() + pos, s.c_str() + eol, &v)) out->push_back(std::move(v));
    pos = eol + 1;
  }
  return true;
}

// ---------------------------------------------------------------- support probe
int ProbeSupport(uint64_t* features, std::string* why) {
  static std::once_flag once;
  static int result = 0;
  static uint64_t avail = 0;
  static std::string reason;
  std::call_once(once, [] {
    int fd = int(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY));
    if (fd < 0) {
      result = -errno;
      reason = "userfaultfd() unavailable: " + Errno(errno);
      return;
    }
    struct uffdio_api api = {};
    api.api = UFFD_API;
    if (ioctl(fd, UFFDIO_API, &api) < 0) {
      result = -errno;
      reason = "UFFDIO_API failed: " + Errno(errno);
      close(fd);
      return;
    }
    close(fd);
    avail = api.features;
    if (!(avail & UFFD_FEATURE_WP_ASYNC) || !(avail & UFFD_FEATURE_WP_UNPOPULATED)) {
      result = -ENOTSUP;
      reason = "kernel lacks UFFD_FEATURE_WP_ASYNC / WP_UNPOPULATED (needs Linux >= 6.7)";
      return;
    }
    int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (pm < 0) {
      result = -errno;
      reason = "cannot open /proc/self/pagemap: " + Errno(errno);
      return;
    }
    static char page[8192] __attribute__((aligned(4096)));
    page[0] = 1;
    struct page_region r[2];
    struct pm_scan_arg a = {};
    a.size = sizeof a;
    a.start = uint64_t(page);
    a.end = a.start + 4096;
    a.vec = uint64_t(r);
    a.vec_len = 2;
    a.category_mask = PAGE_IS_PRESENT;
    a.return_mask = PAGE_IS_PRESENT;
    if (ioctl(pm, PAGEMAP_SCAN, &a) < 0) {
      result = -errno;
      reason = "PAGEMAP_SCAN unsupported: " + Errno(errno) + " (needs Linux >= 6.7)";
    }
    close(pm);
  });
  *features = avail;
  *why = reason;
  return result;
}

// ---------------------------------------------------------------- Tracker
namespace {
struct InjectCtx {
  inject::Target target;
  int pidfd = -1;
  long uffd_in_target = -1;  // raw result of the injected userfaultfd()
  int ours = -1;
  int getfd_errno = 0;
  int err = 0;
  const char* where = "";
  int64_t ns = 0;
  bool user_mode_only = false;
};

// Runs in the detached helper: only async-signal-safe calls.
int InjectBody(void* p) {
  auto* c = static_cast<InjectCtx*>(p);
  inject::Session s(c->target);
  int r = s.Attach(2000);
  if (r == 0) {
    long a[6] = {O_CLOEXEC | O_NONBLOCK, 0, 0, 0, 0, 0};
    r = s.Call(SYS_userfaultfd, a, &c->uffd_in_target);
    if (r == 0 && c->uffd_in_target == -EPERM) {
      // vm.unprivileged_userfaultfd=0 and an unprivileged target: user-mode
      // only faults are enough for async wp (kernel writes never wait).
      a[0] |= UFFD_USER_MODE_ONLY;
      c->user_mode_only = true;
      r = s.Call(SYS_userfaultfd, a, &c->uffd_in_target);
    }
    if (r == 0 && c->uffd_in_target >= 0) {
      c->ours = int(syscall(SYS_pidfd_getfd, c->pidfd, int(c->uffd_in_target), 0));
      if (c->ours < 0) c->getfd_errno = errno;
      long ca[6] = {c->uffd_in_target, 0, 0, 0, 0, 0}, cret = 0;
      r = s.Call(SYS_close, ca, &cret);
    }
  }
  c->where = s.where();
  s.Detach();
  c->ns = s.stopped_ns();
  c->err = r;
  return r;
}

bool HasUserfaultfd(pid_t pid) {
  std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  DIR* d = opendir(dir.c_str());
  if (!d) return false;
  bool found = false;
  char buf[128];
  while (struct dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    ssize_t n = readlinkat(dirfd(d), e->d_name, buf, sizeof buf - 1);
    if (n <= 0) continue;
    buf[n] = 0;
    if (strstr(buf, "[userfaultfd]")) {
      found = true;
      break;
    }
  }
  closedir(d);
  return found;
}
}  // namespace

bool Tracker::Start(Failure* f) {
  int64_t t0 = NowNs();
  if (uffd_ >= 0) {
    Fail(f, "failed", "tracker already started");
    return false;
  }
  uint64_t avail = 0;
  std::string why;
  if (ProbeSupport(&avail, &why) < 0) {
    Fail(f, "no-kernel-support", why, ENOTSUP);
    return false;
  }
  pidfd_ = int(syscall(SYS_pidfd_open, pid_, 0));
  if (pidfd_ < 0) {
    int e = errno;
    Fail(f, e == ESRCH ? "process-gone" : "failed", "pidfd_open(" + std::to_string(pid_) + "): " + Errno(e), e);
    return false;
  }
  // A target with its own userfaultfd would get EBUSY the day it registers a
  // range we hold: refuse rather than break it. The caller falls back.
  if (HasUserfaultfd(pid_)) {
    Fail(f, "uffd-in-use", "process " + std::to_string(pid_) + " already has a userfaultfd", EBUSY);
    Close();
    return false;
  }

  // Test hook only (see syscall_inject.h).
  if (const char* h = getenv("PHAUL_TEST_INJECT_HOLD_MS")) inject::SetTestHoldMs(atoi(h));
  InjectCtx ctx;
  ctx.pidfd = pidfd_;
  if (int r = inject::Prepare(pid_, &ctx.target, &why); r < 0) {
    Fail(f, r == -ESRCH ? "process-gone" : "unsupported", why, -r);
    Close();
    return false;
  }
  int r = inject::RunDetached(InjectBody, &ctx);
  stats_.inject_ns = ctx.ns;
  stats_.borrowed_tid = ctx.target.tid;
  stats_.user_mode_only = ctx.user_mode_only;
  if (r < 0) {
    std::string msg = "syscall injection into " + std::to_string(pid_) + " failed at " + ctx.where + ": " + Errno(-r);
    const char* code =
        r == -ESRCH ? "process-gone" : (r == -EPERM ? "ptrace-denied" : (r == -ENOEXEC ? "unsupported" : "failed"));
    Fail(f, code, msg, -r);
    if (ctx.ours >= 0) close(ctx.ours);
    Close();
    return false;
  }
  if (ctx.uffd_in_target < 0) {
    int e = int(-ctx.uffd_in_target);
    Fail(f, e == ENOSYS ? "no-kernel-support" : "unsupported",
         "userfaultfd() in process " + std::to_string(pid_) + " failed: " + Errno(e), e);
    Close();
    return false;
  }
  if (ctx.ours < 0) {
    Fail(f, "failed", "pidfd_getfd: " + Errno(ctx.getfd_errno), ctx.getfd_errno);
    Close();
    return false;
  }
  uffd_ = ctx.ours;

  struct uffdio_api api = {};
  api.api = UFFD_API;
  api.features = avail & (UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_WP_HUGETLBFS_SHMEM);
  if (ioctl(uffd_, UFFDIO_API, &api) < 0) {
    int e = errno;
    Fail(f, "no-kernel-support", "UFFDIO_API: " + Errno(e), e);
    Close();
    return false;
  }
  stats_.features = api.features;
  pagemap_ = open(("/proc/" + std::to_string(pid_) + "/pagemap").c_str(), O_RDONLY | O_CLOEXEC);
  if (pagemap_ < 0) {
    int e = errno;
    Fail(f, e == ENOENT ? "process-gone" : "failed", "open pagemap: " + Errno(e), e);
    Close();
    return false;
  }
  vec_.assign(4096, page_region{0, 0, 0});
  ScanResult tmp;
  if (!Sync(&tmp, f)) {
    Close();
    return false;
  }
  pending_new_ = std::move(tmp.new_vmas);
  stats_.start_ns = NowNs() - t0;
  return true;
}

int Tracker::Register(const Vma& v, Failure* f) {
  struct uffdio_register reg = {};
  reg.range.start = v.start;
  reg.range.len = v.end - v.start;
  reg.mode = UFFDIO_REGISTER_MODE_WP;
  if (ioctl(uffd_, UFFDIO_REGISTER, &reg) == 0) {
    stats_.registrations++;
    return 1;
  }
  int e = errno;
  switch (e) {
    case EBUSY:
      Fail(f, "uffd-in-use",
           "range " + v.name + " of process " + std::to_string(pid_) + " is registered with another userfaultfd", e);
      return -1;
    case EPERM:   // shared mapping without write access (no VM_MAYWRITE): it cannot change through this process
    case EINVAL:  // VM_PFNMAP/VM_IO/droppable and other kinds uffd refuses
    case ENOMEM:  // unmapped since we read maps: the next round sees it
      return 0;
    case ESRCH: Fail(f, "process-gone", "process " + std::to_string(pid_) + " is gone", e); return -1;
    default: Fail(f, "failed", "UFFDIO_REGISTER " + v.name + ": " + Errno(e), e); return -1;
  }
}

// Brings registration in line with /proc/PID/maps: new VMAs (mmap, brk growth,
// thread stacks, mremap targets) are registered, so their pages show up as
// written in the next PAGEMAP_SCAN (a fresh registration protects nothing).
bool Tracker::Sync(ScanResult* out, Failure* f) {
  int64_t t0 = NowNs();
  std::vector<Vma> cur;
  if (!ReadMaps(&cur, f)) return false;
  Intervals mapped;
  for (auto& v : cur)
    if (!(v.flags & kVmaSpecial)) mapped.Add(v.start, v.end);
  if (!first_ || !mapped_.items().empty()) {
    Intervals gone = mapped_.Minus(mapped);
    for (auto& iv : gone.items()) {
      out->vanished.push_back(iv.first);
      out->vanished.push_back(iv.second);
    }
  }
  tracked_.IntersectWith(mapped);
  for (auto& v : cur) {
    if (v.flags & kVmaSpecial) continue;
    if (tracked_.Covers(v.start, v.end)) {
      v.flags |= kVmaTracked;
      continue;
    }
    // PROT_NONE reservations (JVM/V8/Go heaps, guard areas) stay unregistered:
    // scanning them with wp would allocate page tables for markers, 2 MiB per
    // GiB reserved. They cannot be written while PROT_NONE; the round that sees
    // them become accessible registers them and reports them in full.
    if (!Accessible(v) && !tracked_.Overlaps(v.start, v.end)) continue;
    int r = Register(v, f);
    if (r < 0) return false;
    if (r == 1) {
      tracked_.Add(v.start, v.end);
      v.flags |= kVmaTracked | kVmaNew;
      out->new_vmas.push_back(v.start);
      out->new_vmas.push_back(v.end);
    }
  }
  mapped_ = std::move(mapped);
  vmas_ = std::move(cur);
  out->maps_ns += NowNs() - t0;
  return true;
}

// After PAGEMAP_SCAN said EPERM (a VMA in our coverage is not registered: it
// was replaced by mmap(MAP_FIXED), mremap or munmap+mmap at the same place
// since we read maps), find the culprits by their smaps "uw" flag.
bool Tracker::Recheck(ScanResult* out, Failure* f) {
  std::string s;
  int err = 0;
  if (!ReadAll("/proc/" + std::to_string(pid_) + "/smaps", &s, &err)) {
    Fail(f, "process-gone", "cannot read smaps: " + Errno(err), err);
    return false;
  }
  int fixed = 0;
  Vma v;
  bool have = false;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t eol = s.find('\n', pos);
    if (eol == std::string::npos) eol = s.size();
    const char* line = s.c_str() + pos;
    if (strncmp(line, "VmFlags:", 8) == 0) {
      if (have && !(v.flags & kVmaSpecial) && tracked_.Overlaps(v.start, v.end)) {
        std::string flags(line + 8, size_t(eol - pos - 8));
        if (flags.find(" uw") == std::string::npos) {
          tracked_.Subtract(v.start, v.end);
          fixed++;
          if (Accessible(v)) {
            int r = Register(v, f);
            if (r < 0) return false;
            if (r == 1) {
              tracked_.Add(v.start, v.end);
              out->new_vmas.push_back(v.start);
              out->new_vmas.push_back(v.end);
            }
          }
        }
      }
      have = false;
    } else if (isxdigit((unsigned char)line[0])) {
      Vma nv;
      if (ParseVmaLine(line, s.c_str() + eol, &nv)) {
        v = std::move(nv);
        have = true;
      }
    }
    pos = eol + 1;
  }
  if (!fixed) {
    // Every VMA we scan carries "uw", yet the kernel says one is not async-wp:
    // it belongs to another userfaultfd.
    Fail(f, "uffd-in-use",
         "a mapping of process " + std::to_string(pid_) + " is write-protected by another userfaultfd", EBUSY);
    return false;
  }
  return true;
}

// pagemap was opened on the mm of the process when tracking started; after an
// exit or an execve that mm is dead and reads return EOF. Without this check a
// scan after execve would silently report nothing.
bool Tracker::MmAlive() {
  uint64_t e;
  return pread(pagemap_, &e, sizeof e, 0) == sizeof e;
}

void Tracker::Emit(ScanResult* out, uint64_t s, uint64_t e, uint64_t cat) {
  uint64_t fl = 0;
  if (cat & PAGE_IS_PRESENT) fl |= kRangePresent;
  if (cat & PAGE_IS_SWAPPED) fl |= kRangeSwapped;
  // Written yet neither present nor swapped: the page was zapped (MADV_DONTNEED,
  // hole punch, page-table reclaim) or never populated.
  if (!fl) fl = kRangeZero;
  uint64_t pages = (e - s) >> 12;
  out->pages += pages;
  if (fl == kRangeZero) out->zero_pages += pages;
  auto& r = out->ranges;
  size_t n = r.size();
  if (n >= 3 && r[n - 2] == s && r[n - 1] == fl) {
    r[n - 2] = e;
    return;
  }
  r.push_back(s);
  r.push_back(e);
  r.push_back(fl);
}

bool Tracker::Scan(ScanResult* out, Failure* f, bool protect) {
  int64_t t0 = NowNs();
  if (uffd_ < 0) {
    Fail(f, "failed", "tracker is not started (or closed)");
    return false;
  }
  if (!MmAlive()) {
    Fail(f, "process-gone", "process " + std::to_string(pid_) + " exited or called execve: its tracked memory is gone",
         ESRCH);
    return false;
  }
  out->first = first_;
  out->new_vmas = std::move(pending_new_);
  pending_new_.clear();
  if (!Sync(out, f)) return false;

  int64_t t1 = NowNs();
  size_t dirty = 0;  // entries of vec_ the kernel may have written
  uint64_t pos = 0, s, e;
  while (tracked_.NextFrom(pos, &s, &e)) {
    uint64_t cur = s;
    bool restart = false;
    while (cur < e) {
      // Zeroed so that after an EPERM we can tell which entries the kernel
      // flushed (and already write-protected) before it gave up.
      if (dirty) memset(vec_.data(), 0, dirty * sizeof(vec_[0]));
      dirty = vec_.size();
      struct pm_scan_arg a = {};
      a.size = sizeof a;
      a.flags = protect ? PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC : PM_SCAN_CHECK_WPASYNC;
      a.start = cur;
      a.end = e;
      a.vec = uint64_t(vec_.data());
      a.vec_len = vec_.size();
      a.category_mask = PAGE_IS_WRITTEN;
      a.return_mask = PAGE_IS_WRITTEN | PAGE_IS_PRESENT | PAGE_IS_SWAPPED;
      long n = ioctl(pagemap_, PAGEMAP_SCAN, &a);
      out->ioctls++;
      if (n < 0) {
        int err = errno;
        if (err == EINTR || err == EAGAIN) continue;
        if (err != EPERM) {
          Fail(f, err == ESRCH ? "process-gone" : "failed", "PAGEMAP_SCAN: " + Errno(err), err);
          return false;
        }
        // Keep what was reported: those pages are protected now.
        uint64_t last = cur;
        for (size_t i = 0; i < vec_.size() && vec_[i].end; i++) {
          Emit(out, vec_[i].start, vec_[i].end, vec_[i].categories);
          last = vec_[i].end;
        }
        if (++out->retries > 32) {
          Fail(f, "failed", "PAGEMAP_SCAN keeps failing with EPERM (mappings change faster than we can register them)",
               err);
          return false;
        }
        stats_.eperm_retries++;
        if (!Recheck(out, f)) return false;
        pos = std::max(cur, last);
        restart = true;
        break;
      }
      for (long i = 0; i < n; i++) Emit(out, vec_[i].start, vec_[i].end, vec_[i].categories);
      dirty = size_t(n);
      if (a.walk_end >= e || a.walk_end <= cur) break;
      cur = a.walk_end;
    }
    if (!restart) pos = e;
  }
  if (dirty) memset(vec_.data(), 0, dirty * sizeof(vec_[0]));
  out->scan_ns = NowNs() - t1;

  for (auto& v : vmas_) {
    if (v.flags & kVmaSpecial) continue;
    if (tracked_.Covers(v.start, v.end)) {
      v.flags |= kVmaTracked;
    } else {
      v.flags &= ~uint64_t(kVmaTracked | kVmaNew);
      out->untracked.push_back(v.start);
      out->untracked.push_back(v.end);
    }
    if (v.flags & kVmaShared) {
      out->shared.push_back(v.start);
      out->shared.push_back(v.end);
    }
  }
  out->tracked_bytes = tracked_.Bytes();
  first_ = false;
  out->total_ns = NowNs() - t0;
  stats_.rounds++;
  stats_.pages_reported += out->pages;
  stats_.last_scan_ns = out->total_ns;
  return true;
}

bool Tracker::Present(uint64_t start, uint64_t end, std::vector<uint64_t>* out, Failure* f) {
  if (pagemap_ < 0) {
    Fail(f, "failed", "tracker is not started (or closed)");
    return false;
  }
  ScanResult tmp;
  uint64_t cur = start & ~uint64_t(4095);
  while (cur < end) {
    struct pm_scan_arg a = {};
    a.size = sizeof a;
    a.start = cur;
    a.end = end;
    a.vec = uint64_t(vec_.data());
    a.vec_len = vec_.size();
    a.category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED;
    a.return_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED;
    long n = ioctl(pagemap_, PAGEMAP_SCAN, &a);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      Fail(f, "failed", "PAGEMAP_SCAN: " + Errno(e), e);
      return false;
    }
    for (long i = 0; i < n; i++) Emit(&tmp, vec_[i].start, vec_[i].end, vec_[i].categories);
    memset(vec_.data(), 0, size_t(n) * sizeof(vec_[0]));
    if (a.walk_end >= end || a.walk_end <= cur) break;
    cur = a.walk_end;
  }
  *out = std::move(tmp.ranges);
  return true;
}

bool Tracker::Unprotect(const std::vector<uint64_t>& pairs, uint64_t* bytes, Failure* f) {
  *bytes = 0;
  if (uffd_ < 0) {
    Fail(f, "failed", "tracker is not started (or closed)");
    return false;
  }
  for (size_t i = 0; i + 1 < pairs.size(); i += 2) {
    uint64_t s = pairs[i] & ~uint64_t(4095), e = (pairs[i + 1] + 4095) & ~uint64_t(4095);
    if (e <= s) continue;
    // Only what we registered: UFFDIO_WRITEPROTECT on anything else fails anyway.
    uint64_t pos = s, rs, re;
    while (tracked_.NextFrom(pos, &rs, &re) && rs < e) {
      uint64_t a = std::max(rs, s), b = std::min(re, e);
      pos = re;
      if (a >= b) continue;
      struct uffdio_writeprotect wp = {};
      wp.range.start = a;
      wp.range.len = b - a;
      wp.mode = 0;
      int tries = 0;
      while (ioctl(uffd_, UFFDIO_WRITEPROTECT, &wp) < 0) {
        int err = errno;
        if ((err == EAGAIN || err == EINTR) && ++tries < 100) continue;
        if (err == ENOENT || err == EINVAL) break;  // the mapping changed under us: nothing to clear there
        Fail(f, "failed", "UFFDIO_WRITEPROTECT: " + Errno(err), err);
        return false;
      }
      *bytes += b - a;
    }
  }
  return true;
}

void Tracker::Close() {
  // Closing the uffd unregisters every range; the target runs on untouched.
  if (uffd_ >= 0) close(uffd_), uffd_ = -1;
  if (pagemap_ >= 0) close(pagemap_), pagemap_ = -1;
  if (pidfd_ >= 0) close(pidfd_), pidfd_ = -1;
  tracked_.Clear();
}

}  // namespace dirty

// ======================================================================== N-API
namespace {
using dirty::Failure;

Napi::Value BigArray(Napi::Env env, const std::vector<uint64_t>& v) {
  auto ab = Napi::ArrayBuffer::New(env, v.size() * 8);
  if (!v.empty()) memcpy(ab.Data(), v.data(), v.size() * 8);
  return Napi::TypedArrayOf<uint64_t>::New(env, v.size(), ab, 0, napi_biguint64_array);
}

Napi::Error MakeError(Napi::Env env, const Failure& f) {
  Napi::Error e = Napi::Error::New(env, f.message);
  e.Set("reason", Napi::String::New(env, f.code));
  e.Set("errno", Napi::Number::New(env, f.err));
  return e;
}

// Runs work() on the libuv pool and settles a promise; keeps `self` alive.
class PromiseWorker : public Napi::AsyncWorker {
 public:
  using Work = std::function<bool(Failure*)>;
  using Done = std::function<Napi::Value(Napi::Env)>;
  using Settle = std::function<void()>;
  PromiseWorker(Napi::Object self, Work work, Done done, Settle settle = nullptr)
      : Napi::AsyncWorker(self.Env()),
        self_(Napi::Persistent(self)),
        deferred_(Napi::Promise::Deferred::New(self.Env())),
        work_(std::move(work)),
        done_(std::move(done)),
        settle_(std::move(settle)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { ok_ = work_(&f_); }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    // Results are read here, on the JS thread, before the object is free
    // for the next operation.
    Napi::Value v;
    self_.Reset();
    try {
      if (ok_) v = done_(env);
    } catch (const Napi::Error& e) {
      if (settle_) settle_();
      deferred_.Reject(e.Value());
      return;
    }
    if (settle_) settle_();
    if (!ok_) {
      deferred_.Reject(MakeError(env, f_).Value());
      return;
    }
    deferred_.Resolve(v);
  }
  void OnError(const Napi::Error& e) override {
    self_.Reset();
    if (settle_) settle_();
    deferred_.Reject(e.Value());
  }

 private:
  Napi::ObjectReference self_;  // keeps the tracker alive while we run
  Napi::Promise::Deferred deferred_;
  Work work_;
  Done done_;
  Settle settle_;
  Failure f_;
  bool ok_ = false;
};

class DirtyTrackerWrap : public Napi::ObjectWrap<DirtyTrackerWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(
        env, "DirtyTracker",
        {InstanceMethod("start", &DirtyTrackerWrap::Start), InstanceMethod("scan", &DirtyTrackerWrap::Scan),
         InstanceMethod("present", &DirtyTrackerWrap::Present),
         InstanceMethod("unprotect", &DirtyTrackerWrap::Unprotect), InstanceMethod("vmas", &DirtyTrackerWrap::Vmas),
         InstanceMethod("stats", &DirtyTrackerWrap::Stats), InstanceMethod("close", &DirtyTrackerWrap::Close)});
  }

  explicit DirtyTrackerWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DirtyTrackerWrap>(info) {
    if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), "DirtyTracker(pid: number)");
    int pid = info[0].As<Napi::Number>().Int32Value();
    if (pid <= 0) throw Napi::TypeError::New(info.Env(), "pid must be > 0");
    t_ = std::make_unique<dirty::Tracker>(pid);
  }

 private:
  // One operation at a time: the core is not thread-safe and the JS caller
  // must await each call. close() waits for a running one (bounded: ms).
  bool Busy(Napi::Env env) {
    bool expected = false;
    return !busy_.compare_exchange_strong(expected, true);
  }

  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (Busy(env)) throw Napi::Error::New(env, "DirtyTracker: another operation is running");
    auto* w = new PromiseWorker(
        info.This().As<Napi::Object>(),
        [this](Failure* f) {
          std::lock_guard<std::mutex> g(mu_);
          return t_->Start(f);
        },
        [this](Napi::Env env) {
          auto o = Napi::Object::New(env);
          const auto& s = t_->stats();
          o.Set("injectNs", Napi::Number::New(env, double(s.inject_ns)));
          o.Set("startNs", Napi::Number::New(env, double(s.start_ns)));
          o.Set("features", Napi::Number::New(env, double(s.features)));
          o.Set("userModeOnly", Napi::Boolean::New(env, s.user_mode_only));
          o.Set("tid", Napi::Number::New(env, s.borrowed_tid));
          o.Set("vmas", Napi::Number::New(env, double(t_->vmas().size())));
          return o;
        },
        [this] { busy_ = false; });
    auto p = w->Promise();
    w->Queue();
    return p;
  }

  Napi::Value Scan(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (Busy(env)) throw Napi::Error::New(env, "DirtyTracker: another operation is running");
    bool protect = info.Length() < 1 || info[0].IsUndefined() || info[0].ToBoolean().Value();
    auto res = std::make_shared<dirty::ScanResult>();
    auto* w = new PromiseWorker(
        info.This().As<Napi::Object>(),
        [this, res, protect](Failure* f) {
          std::lock_guard<std::mutex> g(mu_);
          return t_->Scan(res.get(), f, protect);
        },
        [res](Napi::Env env) {
          auto o = Napi::Object::New(env);
          o.Set("ranges", BigArray(env, res->ranges));
          o.Set("newVmas", BigArray(env, res->new_vmas));
          o.Set("vanished", BigArray(env, res->vanished));
          o.Set("shared", BigArray(env, res->shared));
          o.Set("untracked", BigArray(env, res->untracked));
          o.Set("pages", Napi::Number::New(env, double(res->pages)));
          o.Set("zeroPages", Napi::Number::New(env, double(res->zero_pages)));
          o.Set("trackedBytes", Napi::Number::New(env, double(res->tracked_bytes)));
          o.Set("mapsNs", Napi::Number::New(env, double(res->maps_ns)));
          o.Set("scanNs", Napi::Number::New(env, double(res->scan_ns)));
          o.Set("totalNs", Napi::Number::New(env, double(res->total_ns)));
          o.Set("ioctls", Napi::Number::New(env, res->ioctls));
          o.Set("retries", Napi::Number::New(env, res->retries));
          o.Set("first", Napi::Boolean::New(env, res->first));
          return o;
        },
        [this] { busy_ = false; });
    auto p = w->Promise();
    w->Queue();
    return p;
  }

  // present(start: bigint, end: bigint): BigUint64Array triples. Synchronous:
  // meant for the few untracked/shared ranges at switchover.
  Napi::Value Present(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    bool lossless;
    if (info.Length() < 2 || !info[0].IsBigInt() || !info[1].IsBigInt())
      throw Napi::TypeError::New(env, "present(start: bigint, end: bigint)");
    uint64_t s = info[0].As<Napi::BigInt>().Uint64Value(&lossless);
    uint64_t e = info[1].As<Napi::BigInt>().Uint64Value(&lossless);
    std::lock_guard<std::mutex> g(mu_);
    std::vector<uint64_t> out;
    Failure f;
    if (!t_->Present(s, e, &out, &f)) throw MakeError(env, f);
    return BigArray(env, out);
  }

  // unprotect(pairs: BigUint64Array): number of bytes. Synchronous: one ioctl
  // per tracked range the pairs touch, meant for the switchover.
  Napi::Value Unprotect(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsTypedArray() ||
        info[0].As<Napi::TypedArray>().TypedArrayType() != napi_biguint64_array)
      throw Napi::TypeError::New(env, "unprotect(pairs: BigUint64Array)");
    auto arr = info[0].As<Napi::TypedArrayOf<uint64_t>>();
    std::vector<uint64_t> pairs(arr.Data(), arr.Data() + arr.ElementLength());
    if (Busy(env)) throw Napi::Error::New(env, "DirtyTracker: another operation is running");
    uint64_t bytes = 0;
    Failure f;
    bool ok;
    {
      std::lock_guard<std::mutex> g(mu_);
      ok = t_->Unprotect(pairs, &bytes, &f);
    }
    busy_ = false;
    if (!ok) throw MakeError(env, f);
    return Napi::Number::New(env, double(bytes));
  }

  // vmas(): { ranges: BigUint64Array [start,end,flags] triples, names: string[] }
  Napi::Value Vmas(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::lock_guard<std::mutex> g(mu_);
    std::vector<uint64_t> r;
    auto names = Napi::Array::New(env);
    uint32_t i = 0;
    for (auto& v : t_->vmas()) {
      r.push_back(v.start);
      r.push_back(v.end);
      r.push_back(v.flags);
      names.Set(i++, Napi::String::New(env, v.name));
    }
    auto o = Napi::Object::New(env);
    o.Set("ranges", BigArray(env, r));
    o.Set("names", names);
    return o;
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::lock_guard<std::mutex> g(mu_);
    const auto& s = t_->stats();
    auto o = Napi::Object::New(env);
    o.Set("pid", Napi::Number::New(env, t_->pid()));
    o.Set("active", Napi::Boolean::New(env, t_->started()));
    o.Set("rounds", Napi::Number::New(env, double(s.rounds)));
    o.Set("pagesReported", Napi::Number::New(env, double(s.pages_reported)));
    o.Set("lastScanNs", Napi::Number::New(env, double(s.last_scan_ns)));
    o.Set("injectNs", Napi::Number::New(env, double(s.inject_ns)));
    o.Set("startNs", Napi::Number::New(env, double(s.start_ns)));
    o.Set("registrations", Napi::Number::New(env, double(s.registrations)));
    o.Set("epermRetries", Napi::Number::New(env, double(s.eperm_retries)));
    o.Set("features", Napi::Number::New(env, double(s.features)));
    o.Set("userModeOnly", Napi::Boolean::New(env, s.user_mode_only));
    return o;
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    std::lock_guard<std::mutex> g(mu_);
    t_->Close();
    return info.Env().Undefined();
  }

  std::unique_ptr<dirty::Tracker> t_;
  std::mutex mu_;
  std::atomic<bool> busy_{false};
};

// injectSyscall(pid, nr, args?: number[]): { ret: number, ns: number }
// Diagnostic/test entry point; blocks for the duration of the injection.
Napi::Value InjectSyscall(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber())
    throw Napi::TypeError::New(env, "injectSyscall(pid: number, nr: number, args?: number[])");
  long args[6] = {0};
  if (info.Length() > 2 && info[2].IsArray()) {
    auto a = info[2].As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length() && i < 6; i++) args[i] = long(a.Get(i).As<Napi::Number>().Int64Value());
  }
  long ret = 0;
  int64_t ns = 0;
  std::string err;
  int r = inject::InjectOne(info[0].As<Napi::Number>().Int32Value(), info[1].As<Napi::Number>().Int64Value(), args,
                            &ret, &err, &ns);
  if (r < 0) {
    Failure f;
    f.code = r == -ESRCH ? "process-gone" : (r == -EPERM ? "ptrace-denied" : "failed");
    f.message = err;
    f.err = -r;
    throw MakeError(env, f);
  }
  auto o = Napi::Object::New(env);
  o.Set("ret", Napi::Number::New(env, double(ret)));
  o.Set("ns", Napi::Number::New(env, double(ns)));
  return o;
}

// dirtyTrackingSupport(): { ok, features, reason }
Napi::Value Support(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t feat = 0;
  std::string why;
  int r = dirty::ProbeSupport(&feat, &why);
  auto o = Napi::Object::New(env);
  o.Set("ok", Napi::Boolean::New(env, r == 0));
  o.Set("features", Napi::Number::New(env, double(feat)));
  o.Set("reason", Napi::String::New(env, why));
  return o;
}

// sameMm(pid1, pid2): do two processes share one mm (vfork, CLONE_VM)? Then
// one tracker covers both, and a second would fail with EBUSY.
Napi::Value SameMm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber())
    throw Napi::TypeError::New(env, "sameMm(pid1: number, pid2: number)");
  long r = syscall(SYS_kcmp, info[0].As<Napi::Number>().Int32Value(), info[1].As<Napi::Number>().Int32Value(), KCMP_VM,
                   0, 0);
  if (r < 0) {
    Failure f{errno == ESRCH ? "process-gone" : "failed", std::string("kcmp: ") + strerror(errno), errno};
    throw MakeError(env, f);
  }
  return Napi::Boolean::New(env, r == 0);
}
}  // namespace

void InitDirtyTracker(Napi::Env env, Napi::Object exports) {
  exports.Set("DirtyTracker", DirtyTrackerWrap::Define(env));
  exports.Set("injectSyscall", Napi::Function::New(env, InjectSyscall, "injectSyscall"));
  exports.Set("dirtyTrackingSupport", Napi::Function::New(env, Support, "dirtyTrackingSupport"));
  exports.Set("sameMm", Napi::Function::New(env, SameMm, "sameMm"));
  auto c = Napi::Object::New(env);
  c.Set("RANGE_PRESENT", Napi::Number::New(env, dirty::kRangePresent));
  c.Set("RANGE_SWAPPED", Napi::Number::New(env, dirty::kRangeSwapped));
  c.Set("RANGE_ZERO", Napi::Number::New(env, dirty::kRangeZero));
  c.Set("VMA_READ", Napi::Number::New(env, dirty::kVmaRead));
  c.Set("VMA_WRITE", Napi::Number::New(env, dirty::kVmaWrite));
  c.Set("VMA_EXEC", Napi::Number::New(env, dirty::kVmaExec));
  c.Set("VMA_SHARED", Napi::Number::New(env, dirty::kVmaShared));
  c.Set("VMA_FILE", Napi::Number::New(env, dirty::kVmaFile));
  c.Set("VMA_SPECIAL", Napi::Number::New(env, dirty::kVmaSpecial));
  c.Set("VMA_TRACKED", Napi::Number::New(env, dirty::kVmaTracked));
  c.Set("VMA_NEW", Napi::Number::New(env, dirty::kVmaNew));
  c.Set("VMA_STACK", Napi::Number::New(env, dirty::kVmaStack));
  c.Set("VMA_HEAP", Napi::Number::New(env, dirty::kVmaHeap));
  exports.Set("dirtyConstants", c);
}

}  // namespace phaul
