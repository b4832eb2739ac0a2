// Dirty-page tracking of one process with userfaultfd write-protect (async)
// and PAGEMAP_SCAN (docs/DESIGN.md section 3). Knows nothing of policy or sockets.
//
// One Tracker per process (the uffd is per mm; children of fork are not
// covered: the caller tracks each process). Scan() reports, as compact
// [start, end, flags) triples, every page written since the previous Scan();
// the first Scan() reports every page. Writes by *other* processes to shared
// mappings are not seen: Scan() lists shared ranges so the caller can re-send
// them at switchover.
#pragma once
#include <stdint.h>
#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

#include "intervals.h"
#include "proc_maps.h"
#include "uapi_compat.h"

namespace phaul {
namespace dirty {

// Flags of a dirty range (third word of each triple).
enum RangeFlag : uint64_t {
  kRangePresent = 1,  // pages in RAM: read them
  kRangeSwapped = 2,  // pages in swap: read them (the read swaps them in)
  kRangeZero = 4,     // no page (never populated, or MADV_DONTNEED'd / zapped):
                      // zeros for anonymous memory, backing-file content for file mappings
};

// A typed failure the caller can act on (e.g. fall back to another mode).
struct Failure {
  std::string code;  // "uffd-in-use", "no-kernel-support", "ptrace-denied",
                     // "process-gone", "unsupported", "failed"
  std::string message;
  int err = 0;  // errno
};

struct ScanResult {
  std::vector<uint64_t> ranges;     // [start, end, flags] triples, ascending
  std::vector<uint64_t> new_vmas;   // [start, end) pairs registered this round (their pages are in `ranges`)
  std::vector<uint64_t> vanished;   // [start, end) pairs unmapped since the previous round
  std::vector<uint64_t> shared;     // [start, end) pairs of shared mappings (see header comment)
  std::vector<uint64_t> untracked;  // [start, end) pairs mapped but not tracked: copy them at switchover
  uint64_t pages = 0;               // pages in `ranges`
  uint64_t zero_pages = 0;          // of which kRangeZero
  uint64_t tracked_bytes = 0;       // bytes covered by registration
  int64_t maps_ns = 0, scan_ns = 0, total_ns = 0;
  uint32_t ioctls = 0, retries = 0;
  bool first = false;
};

struct Stats {
  int64_t inject_ns = 0;  // target held by ptrace during start()
  int64_t start_ns = 0;   // whole start()
  uint64_t rounds = 0;
  uint64_t pages_reported = 0;
  int64_t last_scan_ns = 0;
  uint64_t registrations = 0;
  uint64_t eperm_retries = 0;
  uint64_t features = 0;  // UFFD features enabled
  bool user_mode_only = false;
  pid_t borrowed_tid = 0;
};

class Tracker {
 public:
  explicit Tracker(pid_t pid) : pid_(pid) {}
  ~Tracker() { Close(); }
  Tracker(const Tracker&) = delete;
  Tracker& operator=(const Tracker&) = delete;

  bool Start(Failure* f);
  // protect=false (the last scan, with the tree frozen): report without
  // write-protecting again; re-protecting never-populated ranges would install
  // a marker per page, inside the pause, for nothing.
  // sync=false: scan only what is registered already, without reading the
  // maps (no new mapping is registered or reported, none is dropped): for a
  // frozen tree while CRIU's parasite is mapped into it; a later scan with
  // sync picks up whatever mappings this one did not look at.
  bool Scan(ScanResult* out, Failure* f, bool protect = true, bool sync = true);
  // Present/swapped pages of [start,end) without touching protection (for
  // untracked or shared ranges at switchover). Triples like Scan().
  bool Present(uint64_t start, uint64_t end, std::vector<uint64_t>* out, Failure* f);
  // Clears write protection on [start, end) pairs. Their pages then count as
  // written (the next scan reports any that are populated), and never-populated
  // ones lose their uffd-wp markers, which /proc/PID/pagemap shows as swap
  // entries (so CRIU would list them as pages). Pairs outside registered ranges
  // (a mapping gone since) are skipped. Returns the bytes unprotected.
  bool Unprotect(const std::vector<uint64_t>& pairs, uint64_t* bytes, Failure* f);
  void Close();
  bool started() const { return uffd_ >= 0; }
  pid_t pid() const { return pid_; }
  const std::vector<Vma>& vmas() const { return vmas_; }
  const Stats& stats() const { return stats_; }

 private:
  bool ReadMaps(std::vector<Vma>* out, Failure* f);
  bool Sync(ScanResult* out, Failure* f);
  // 1 registered, 0 not registrable (left untracked), -1 fatal (f set).
  int Register(const Vma& v, Failure* f);
  bool Recheck(ScanResult* out, Failure* f);
  bool MmAlive();
  void Emit(ScanResult* out, uint64_t s, uint64_t e, uint64_t cat);

  pid_t pid_;
  int pidfd_ = -1, uffd_ = -1, pagemap_ = -1;
  std::vector<Vma> vmas_;
  Intervals tracked_;
  Intervals mapped_;  // non-special mapped coverage at the last sync
  std::vector<uint64_t> pending_new_;
  std::vector<struct page_region> vec_;
  bool first_ = true;
  Stats stats_;
};

}  // namespace dirty
}  // namespace phaul
