// Kernel feature probes (see probe.h). All work on a few pages mmap'ed here and
// unmapped before returning; nothing outside this process is touched. They are
// synchronous: each takes well under a millisecond, but for WpFault(), which
// times 4096 write-protect faults (tens of ms where they are slow).
#include "probe.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "modules.h"
#include "uapi_compat.h"  // the kernel UAPI bits Debian 12 headers lack (shared with the tracker)

namespace phaul {
namespace probe {
namespace {

const size_t kPage = static_cast<size_t>(sysconf(_SC_PAGESIZE));

std::string Errno(const char* what, int err) {
  return std::string(what) + ": " + strerror(err) + " (errno " + std::to_string(err) + ")";
}

// A private anonymous mapping that unmaps itself.
struct Pages {
  char* base = nullptr;
  size_t len = 0;
  explicit Pages(size_t n) : len(n * kPage) {
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    base = p == MAP_FAILED ? nullptr : static_cast<char*>(p);
  }
  ~Pages() {
    if (base) munmap(base, len);
  }
  // volatile so the compiler cannot drop or merge the writes the probes count on.
  void Touch(size_t i) { *reinterpret_cast<volatile char*>(base + i * kPage) = 1; }
  uint64_t Addr(size_t i) const { return reinterpret_cast<uint64_t>(base + i * kPage); }
};

struct Fd {
  int fd;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

// Runs PAGEMAP_SCAN over [start, end) and returns the page indexes (relative to
// start) of every region reported, or -errno.
long Scan(int pagemap, uint64_t start, uint64_t end, uint64_t flags, uint64_t category, std::vector<size_t>* pages) {
  std::vector<page_region> vec((end - start) / kPage);
  pm_scan_arg arg;
  memset(&arg, 0, sizeof(arg));
  arg.size = sizeof(arg);
  arg.flags = flags;
  arg.start = start;
  arg.end = end;
  arg.vec = reinterpret_cast<uint64_t>(vec.data());
  arg.vec_len = vec.size();
  arg.category_mask = category;
  arg.return_mask = category;
  long n = ioctl(pagemap, PAGEMAP_SCAN, &arg);
  if (n < 0) return -errno;
  for (long r = 0; r < n; r++)
    for (uint64_t a = vec[r].start; a < vec[r].end; a += kPage) pages->push_back((a - start) / kPage);
  return n;
}

std::string List(const std::vector<size_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); i++) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "]";
}

// Reads the 64-bit pagemap entry of one virtual address.
bool PagemapEntry(int pagemap, uint64_t addr, uint64_t* out) {
  return pread(pagemap, out, sizeof(*out), static_cast<off_t>(addr / kPage * sizeof(*out))) == sizeof(*out);
}

}  // namespace

int OpenUffd() {
  int fd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (fd < 0 && errno == EPERM)
    fd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY));
  return fd;
}

UffdResult Userfaultfd() {
  UffdResult r;
  // UFFDIO_API may be called once per descriptor: one descriptor asks for no
  // feature (the kernel answers with all it supports), a second one asks for
  // the features the dirty tracker needs, which fails with EINVAL if absent.
  Fd q(OpenUffd());
  if (q.fd < 0) {
    r.detail = Errno("userfaultfd()", errno);
    return r;
  }
  uffdio_api api;
  memset(&api, 0, sizeof(api));
  api.api = UFFD_API;
  if (ioctl(q.fd, UFFDIO_API, &api) < 0) {
    r.detail = Errno("UFFDIO_API", errno);
    return r;
  }
  r.available = true;
  r.features = api.features;

  Fd w(OpenUffd());
  memset(&api, 0, sizeof(api));
  api.api = UFFD_API;
  api.features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
  if (w.fd >= 0 && ioctl(w.fd, UFFDIO_API, &api) == 0) {
    r.wpAsync = (api.features & UFFD_FEATURE_WP_ASYNC) != 0;
    r.wpUnpopulated = (api.features & UFFD_FEATURE_WP_UNPOPULATED) != 0;
  }
  char hex[32];
  snprintf(hex, sizeof(hex), "0x%llx", static_cast<unsigned long long>(r.features));
  r.detail = std::string("UFFDIO_API features ") + hex + "; WP_ASYNC " + (r.wpAsync ? "accepted" : "refused") +
             ", WP_UNPOPULATED " + (r.wpUnpopulated ? "accepted" : "refused");
  return r;
}

Result PagemapScan() {
  Result r;
  Fd pm(open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
  if (pm.fd < 0) {
    r.detail = Errno("open /proc/self/pagemap", errno);
    return r;
  }
  Pages p(4);
  if (!p.base) {
    r.detail = Errno("mmap", errno);
    return r;
  }
  p.Touch(0);
  p.Touch(2);
  std::vector<size_t> got;
  long n = Scan(pm.fd, p.Addr(0), p.Addr(4), 0, PAGE_IS_PRESENT, &got);
  if (n < 0) {
    // ENOTTY: the kernel's pagemap has no ioctl at all (before 6.7).
    r.detail = Errno("ioctl(PAGEMAP_SCAN)", static_cast<int>(-n));
    return r;
  }
  r.ok = got == std::vector<size_t>{0, 2};
  r.detail = "present pages of a 4-page mapping with pages 0,2 touched: " + List(got);
  return r;
}

namespace {
// A userfaultfd with async write-protect registered over n fresh pages of our
// own, every one touched, and /proc/self/pagemap to scan them: what WpTracking
// and WpFault exercise. Unregistered before the pages are unmapped, so nothing
// of a probe outlives it.
struct WpRig {
  Fd uffd{-1}, pm{-1};
  Pages p;
  uffdio_range range{};
  bool registered = false;
  explicit WpRig(size_t n) : p(n) {}
  ~WpRig() {
    if (registered) ioctl(uffd.fd, UFFDIO_UNREGISTER, &range);
  }
  WpRig(const WpRig&) = delete;
  WpRig& operator=(const WpRig&) = delete;
  // "" once registered, else which call failed and why. smallPages: no THP.
  std::string Setup(bool smallPages) {
    uffd.fd = OpenUffd();
    if (uffd.fd < 0) return Errno("userfaultfd()", errno);
    uffdio_api api;
    memset(&api, 0, sizeof(api));
    api.api = UFFD_API;
    api.features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
    if (ioctl(uffd.fd, UFFDIO_API, &api) < 0) return Errno("UFFDIO_API(WP_ASYNC|WP_UNPOPULATED)", errno);
    pm.fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (pm.fd < 0) return Errno("open /proc/self/pagemap", errno);
    if (!p.base) return Errno("mmap", errno);
    if (smallPages) madvise(p.base, p.len, MADV_NOHUGEPAGE);
    for (size_t i = 0; i < p.len / kPage; i++) p.Touch(i);
    uffdio_register reg;
    memset(&reg, 0, sizeof(reg));
    reg.range.start = p.Addr(0);
    reg.range.len = p.len;
    reg.mode = UFFDIO_REGISTER_MODE_WP;
    if (ioctl(uffd.fd, UFFDIO_REGISTER, &reg) < 0) return Errno("UFFDIO_REGISTER(MODE_WP)", errno);
    range = reg.range;
    registered = true;
    return "";
  }
};
}  // namespace

Result WpTracking() {
  Result r;
  const size_t n = 8;
  WpRig rig(n);
  r.detail = rig.Setup(false);
  if (!r.detail.empty()) return r;
  Pages& p = rig.p;
  // Same flags as the dirty tracker (docs/DESIGN.md section 3): report written pages
  // and write-protect them again in the same walk. With async WP a write to a
  // protected page is resolved by the kernel, so no fault reader is needed.
  const uint64_t flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC;
  std::vector<size_t> first, dirty, clean;
  const int pm = rig.pm.fd;
  long e = Scan(pm, p.Addr(0), p.Addr(n), flags, PAGE_IS_WRITTEN, &first);
  if (e >= 0) {
    p.Touch(3);
    p.Touch(5);
    e = Scan(pm, p.Addr(0), p.Addr(n), flags, PAGE_IS_WRITTEN, &dirty);
  }
  if (e >= 0) e = Scan(pm, p.Addr(0), p.Addr(n), flags, PAGE_IS_WRITTEN, &clean);
  if (e < 0) {
    r.detail = Errno("ioctl(PAGEMAP_SCAN, WP_MATCHING|CHECK_WPASYNC)", static_cast<int>(-e));
    return r;
  }
  r.ok = first.size() == n && dirty == std::vector<size_t>{3, 5} && clean.empty();
  r.detail = "first scan " + std::to_string(first.size()) + "/" + std::to_string(n) +
             " written, after writing pages 3,5: " + List(dirty) + ", then: " + List(clean);
  return r;
}

Result SoftDirty() {
  Result r;
  Fd pm(open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
  Fd cr(open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC));
  if (pm.fd < 0 || cr.fd < 0) {
    r.detail = Errno(pm.fd < 0 ? "open /proc/self/pagemap" : "open /proc/self/clear_refs", errno);
    return r;
  }
  Pages p(1);
  if (!p.base) {
    r.detail = Errno("mmap", errno);
    return r;
  }
  p.Touch(0);
  // "4" clears the soft-dirty bits of this whole process (harmless: nothing in
  // here relies on them). Without CONFIG_MEM_SOFT_DIRTY the write is accepted
  // but bit 55 is never set, so only the bit after a fresh write is evidence.
  if (write(cr.fd, "4", 1) != 1) {
    r.detail = Errno("write 4 > /proc/self/clear_refs", errno);
    return r;
  }
  uint64_t cleared = 0, written = 0;
  if (!PagemapEntry(pm.fd, p.Addr(0), &cleared)) {
    r.detail = Errno("read /proc/self/pagemap", errno);
    return r;
  }
  p.Touch(0);
  if (!PagemapEntry(pm.fd, p.Addr(0), &written)) {
    r.detail = Errno("read /proc/self/pagemap", errno);
    return r;
  }
  const uint64_t bit55 = 1ULL << 55;
  bool afterClear = cleared & bit55, afterWrite = written & bit55;
  r.ok = !afterClear && afterWrite;
  if (r.ok)
    r.detail = "pagemap bit 55 cleared by clear_refs and set again by a write";
  else if (!afterWrite)
    r.detail = "pagemap bit 55 stays clear after a write (kernel built without CONFIG_MEM_SOFT_DIRTY)";
  else
    r.detail = "pagemap bit 55 not cleared by clear_refs=4";
  return r;
}

// Does reading untouched anonymous memory map the shared zero page, or
// allocate? Some hypervisor kernels (pvm_no_zero_page=1) allocate on read,
// which changes what "sparse" costs: a check that reads untouched memory
// makes it resident. Evidence: VmRSS (which never counts the zero page)
// before and after reading 1024 fresh pages.
Result ZeroPage() {
  Result r;
  const size_t n = 1024;
  Pages p(n);
  if (!p.base) {
    r.detail = Errno("mmap", errno);
    return r;
  }
  auto residentPages = []() -> long {
    FILE* f = fopen("/proc/self/statm", "r");
    long size = -1, resident = -1;
    if (f) {
      if (fscanf(f, "%ld %ld", &size, &resident) != 2) resident = -1;
      fclose(f);
    }
    return resident;
  };
  long before = residentPages();
  unsigned sum = 0;
  for (size_t i = 0; i < n; i++) sum += *reinterpret_cast<volatile unsigned char*>(p.base + i * kPage);
  long after = residentPages();
  if (before < 0 || after < 0) {
    r.detail = Errno("read /proc/self/statm", errno);
    return r;
  }
  long grew = after - before;
  r.ok = sum == 0 && grew < static_cast<long>(n / 4);
  r.detail =
      "reading " + std::to_string(n) + " untouched pages made " + std::to_string(grew < 0 ? 0 : grew) + " resident" +
      (r.ok ? " (the shared zero page is mapped)" : " (reads allocate: no shared zero page, e.g. pvm_no_zero_page=1)");
  return r;
}

namespace {
// This thread's CPU time: a fault's cost without the time others ran
// meanwhile (the guest accounts a hypervisor's work on the fault to the task).
int64_t CpuNs() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return int64_t(t.tv_sec) * 1000000000 + t.tv_nsec;
}

int64_t Us(const timeval& t) { return int64_t(t.tv_sec) * 1000000 + t.tv_usec; }

// One write to each of p's pages; ns for the whole pass.
int64_t WritePass(Pages& p, size_t n) {
  int64_t t0 = CpuNs();
  for (size_t i = 0; i < n; i++) *reinterpret_cast<volatile char*>(p.base + i * kPage) += 1;
  return CpuNs() - t0;
}
}  // namespace

WpFaultCost WpFault() {
  WpFaultCost c;
  // 8 MiB of 4 KiB pages (no THP: one fault per page, as a workload's small
  // pages take them); ~30 ms where a fault costs 15 us.
  const size_t n = 2048;
  WpRig rig(n);
  c.detail = rig.Setup(true);
  if (!c.detail.empty()) return c;
  Pages& p = rig.p;
  // Two rounds as the dirty tracker runs them (protect with PAGEMAP_SCAN, then
  // the workload writes); the cheaper round counts, so a preemption in one
  // does not. Each round's protected pass is compared with a pass over the
  // same pages right after, unprotected by it: the difference is the faults.
  const uint64_t flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC;
  double best = -1;
  for (int round = 0; round < 2; round++) {
    std::vector<size_t> written;
    int64_t t0 = CpuNs();
    long e = Scan(rig.pm.fd, p.Addr(0), p.Addr(n), flags, PAGE_IS_WRITTEN, &written);
    int64_t protectNs = CpuNs() - t0;
    if (e < 0) {
      c.detail = Errno("ioctl(PAGEMAP_SCAN, WP_MATCHING|CHECK_WPASYNC)", static_cast<int>(-e));
      return c;
    }
    rusage a, b;
    getrusage(RUSAGE_THREAD, &a);
    int64_t faulting = WritePass(p, n);
    getrusage(RUSAGE_THREAD, &b);
    int64_t plain = WritePass(p, n);
    double per = double(std::max<int64_t>(faulting - plain, 0)) / n;
    if (best < 0 || per < best) {
      best = per;
      c.faultNs = per;
      c.protectNsPerPage = double(protectNs) / n;
      c.plainNsPerPage = double(plain) / n;
      c.userNs = double(Us(b.ru_utime) - Us(a.ru_utime)) * 1000 / n;
      c.sysNs = double(Us(b.ru_stime) - Us(a.ru_stime)) * 1000 / n;
      c.faults = uint64_t(b.ru_minflt - a.ru_minflt);
    }
  }
  c.ok = true;
  char buf[320];
  snprintf(buf, sizeof buf,
           "first write to a write-protected page %.1f us of CPU (%llu of %zu writes faulted; getrusage: user %.1f, "
           "sys %.1f us), an unprotected write %.2f us, protecting %.2f us per page",
           c.faultNs / 1000, static_cast<unsigned long long>(c.faults), n, c.userNs / 1000, c.sysNs / 1000,
           c.plainNsPerPage / 1000, c.protectNsPerPage / 1000);
  c.detail = buf;
  return c;
}

const TrackerSupport& DirtyTrackingSupport() {
  // A function-local static: initialized once, thread-safely, on first use.
  static const TrackerSupport s = [] {
    TrackerSupport t;
    UffdResult u = Userfaultfd();
    t.features = u.features;
    if (!u.available) {
      t.reason = "userfaultfd unavailable: " + u.detail;
    } else if (!u.wpAsync || !u.wpUnpopulated) {
      t.reason = "kernel lacks UFFD_FEATURE_WP_ASYNC / WP_UNPOPULATED (needs Linux >= 6.7)";
    } else {
      Result pm = PagemapScan();
      if (!pm.ok) t.reason = "PAGEMAP_SCAN unsupported: " + pm.detail + " (needs Linux >= 6.7)";
      t.ok = pm.ok;
    }
    return t;
  }();
  return s;
}

}  // namespace probe

namespace {

Napi::Object ResultObject(Napi::Env env, const probe::Result& r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("ok", r.ok);
  o.Set("detail", r.detail);
  return o;
}

// probeKernel() -> { userfaultfd, uffdWpAsync, pagemapScan, wpTracking, softDirty, zeroPage }
// each { ok: boolean, detail: string }; userfaultfd adds features (hex string),
// wpUnpopulated. Synchronous: the probes are sub-millisecond.
Napi::Value ProbeKernel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  probe::UffdResult u = probe::Userfaultfd();
  Napi::Object out = Napi::Object::New(env);

  Napi::Object uffd = Napi::Object::New(env);
  uffd.Set("ok", u.available);
  uffd.Set("detail", u.detail);
  char hex[32];
  snprintf(hex, sizeof(hex), "0x%llx", static_cast<unsigned long long>(u.features));
  uffd.Set("features", std::string(hex));
  uffd.Set("wpUnpopulated", u.wpUnpopulated);
  out.Set("userfaultfd", uffd);

  probe::Result wpAsync{u.wpAsync, u.detail};
  out.Set("uffdWpAsync", ResultObject(env, wpAsync));
  out.Set("pagemapScan", ResultObject(env, probe::PagemapScan()));
  out.Set("wpTracking", ResultObject(env, probe::WpTracking()));
  out.Set("softDirty", ResultObject(env, probe::SoftDirty()));
  out.Set("zeroPage", ResultObject(env, probe::ZeroPage()));
  return out;
}

// measureWpFault() -> { ok, detail, faultNs, userNs, sysNs, plainNs, protectNs, faults }
// (ns per page). Synchronous, tens of ms on a slow-faulting VM: check and the
// bench call it once; nothing on a migration's path does.
Napi::Value MeasureWpFault(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  probe::WpFaultCost c = probe::WpFault();
  Napi::Object o = Napi::Object::New(env);
  o.Set("ok", c.ok);
  o.Set("detail", c.detail);
  o.Set("faultNs", c.faultNs);
  o.Set("userNs", c.userNs);
  o.Set("sysNs", c.sysNs);
  o.Set("plainNs", c.plainNsPerPage);
  o.Set("protectNs", c.protectNsPerPage);
  o.Set("faults", double(c.faults));
  return o;
}

}  // namespace

void InitProbe(Napi::Env env, Napi::Object exports) {
  exports.Set("probeKernel", Napi::Function::New(env, ProbeKernel, "probeKernel"));
  exports.Set("measureWpFault", Napi::Function::New(env, MeasureWpFault, "measureWpFault"));
}

}  // namespace phaul
