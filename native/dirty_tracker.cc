// The dirty tracker's core: uffd-wp async + PAGEMAP_SCAN over one process
// (dirty_tracker.h). The recipe, its costs and its edge cases are in
// docs/DESIGN.md; the comments here say why the code deviates or adds to it.
// Its N-API binding is dirty_tracker_binding.cc.
#include "dirty_tracker.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>

#include "probe.h"
#include "syscall_inject.h"
#include "uapi_compat.h"  // pidfd syscall numbers

namespace phaul {
namespace dirty {

using inject::NowNs;

static void Fail(Failure* f, const char* code, const std::string& msg, int err = 0) {
  f->code = code;
  f->message = msg;
  f->err = err;
}

static std::string Errno(int e) { return std::string(strerror(e)); }

// ---------------------------------------------------------------- /proc/PID/maps
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
  const probe::TrackerSupport& support = probe::DirtyTrackingSupport();
  if (!support.ok) {
    Fail(f, "no-kernel-support", support.reason, ENOTSUP);
    return false;
  }
  const uint64_t avail = support.features;
  std::string why;
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
    Fail(f, (e == ENOENT || e == ESRCH) ? "process-gone" : "failed", "open pagemap: " + Errno(e), e);
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
      v.flags |= kVmaTracked;
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

bool Tracker::Scan(ScanResult* out, Failure* f, bool protect, bool sync) {
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
  if (sync) {
    out->new_vmas = std::move(pending_new_);
    pending_new_.clear();
    if (!Sync(out, f)) return false;
  }

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
      v.flags &= ~uint64_t(kVmaTracked);
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

}  // namespace phaul
