// Kernel feature probes. Each one exercises the feature on this process's own
// memory instead of trusting a kernel version or a header, so a backported or
// disabled feature is reported as it really is.
#pragma once
#include <cstdint>
#include <string>

namespace phaul {
namespace probe {

struct Result {
  bool ok = false;
  std::string detail;  // one line: what was seen, or which call failed and why
};

struct UffdResult {
  bool available = false;      // userfaultfd() works at all (lazy pages need it)
  bool wpAsync = false;        // UFFDIO_API accepted UFFD_FEATURE_WP_ASYNC
  bool wpUnpopulated = false;  // ... and UFFD_FEATURE_WP_UNPOPULATED
  uint64_t features = 0;       // every feature the kernel reports as supported
  std::string detail;
};

// userfaultfd(2) with O_CLOEXEC|O_NONBLOCK, retried with UFFD_USER_MODE_ONLY
// when vm.unprivileged_userfaultfd=0 refuses an unprivileged caller. -1 + errno.
int OpenUffd();

UffdResult Userfaultfd();
Result PagemapScan();  // a real PAGEMAP_SCAN over a small mapping of our own
Result WpTracking();   // uffd-wp async + PAGEMAP_SCAN finding exactly the written pages
Result SoftDirty();    // clear_refs=4 then a write must set pagemap bit 55

// What one write-protect fault costs here: pre-copy's rounds protect every
// page they send, and a workload pays this once per page it writes again in
// each round, far more where a hypervisor keeps shadow page tables (PVM).
// ns per page; the cheaper of two rounds.
struct WpFaultCost {
  bool ok = false;
  double faultNs = 0;            // first write to a protected page, less an unprotected write
  double userNs = 0, sysNs = 0;  // the faulting pass's CPU per page, by getrusage (coarse)
  double plainNsPerPage = 0;     // a write to the same page, unprotected
  double protectNsPerPage = 0;   // PAGEMAP_SCAN with WP_MATCHING, per page protected
  uint64_t faults = 0;           // minor faults the protected pass took
  std::string detail;
};
WpFaultCost WpFault();

// What the dirty tracker needs: userfaultfd with WP_ASYNC and WP_UNPOPULATED,
// and PAGEMAP_SCAN. Probed once per process (the first call), then cached.
struct TrackerSupport {
  bool ok = false;
  uint64_t features = 0;  // the kernel's userfaultfd features
  std::string reason;     // why not, when !ok
};
const TrackerSupport& DirtyTrackingSupport();

}  // namespace probe
}  // namespace phaul
