// The lazy-pages server: fills a lazily restored tree's memory through the
// userfaultfds `criu restore --lazy-pages` hands over on its lazy-pages
// socket, from page data already on this host (files read, never mapped). Pure
// C++ core; the N-API binding is in lazy_fill_napi.cc.
#pragma once
#include <stdint.h>

#include <string>
#include <vector>

namespace phaul {
namespace lazyfill {

// Pages of one image id at [start, end) (addresses, page-aligned) whose data
// is at byte `off` of files[file].
struct Extent {
  uint64_t start, end;
  uint32_t file;
  uint64_t off;
};

struct Image {
  int32_t id;  // CRIU's image id: the pid in the tree's namespace, as the restore sends it
  std::vector<Extent> extents;
};

struct Options {
  int listen_fd = -1;  // a listening unix socket (Listen()); closed by Serve
  std::vector<std::string> files;
  std::vector<Image> images;
  int threads = 2;                   // background fill threads (the fault thread is extra)
  uint64_t chunk_bytes = 1 << 20;    // what a background thread claims at a time
  uint64_t slice_bytes = 256 << 10;  // what one background UFFDIO_COPY places: a read of a
                                     // userfaultfd waits for the one under way (lazy_fill.cc)
  uint64_t fault_bytes = 64 << 10;   // what a fault brings in (aligned around it)
  bool punch = true;                 // give each file range back once it is in the workload
  int connect_timeout_ms = 600000;   // for the restore to connect
  // Postcopy: the files' data arrives while the tree runs. No page is copied
  // before its file range is said present on this socket (ControlRecord
  // kPresent, in); a fault on a page not present waits and its neighbourhood
  // is asked for (kNeed, out). The socket's end before every page is placed
  // is a failure (the pages can no longer come). -1: all data is there.
  int control_fd = -1;
  // Keep a timeline of the first seconds after the restore (Stats::trace), for measuring.
  bool trace = false;
};

// One record on Options::control_fd, both ways (host byte order).
struct ControlRecord {
  uint32_t kind;  // kPresent or kNeed
  uint32_t file;  // index into Options::files
  uint64_t off, len;
};
static const uint32_t kPresent = 1, kNeed = 2;

struct Stats {
  uint32_t tasks = 0, zombies = 0, forks = 0, exits = 0;
  uint64_t pages = 0;         // pages the images listed as lazy
  uint64_t copied_pages = 0;  // placed with UFFDIO_COPY (faults and background)
  uint64_t fault_pages = 0;   // of which for a fault
  uint64_t faults = 0, zero_faults = 0, dropped_pages = 0, punched_bytes = 0;
  uint64_t copies = 0, retries = 0;
  uint64_t joined_faults = 0;  // faults on a page a background copy had under way: its wake answered them
  uint64_t waited_faults = 0;  // postcopy: faults that waited for their page to arrive
  uint64_t needs = 0;          // postcopy: ranges asked for (kNeed records written)
  uint64_t restore_needs = 0;  // postcopy: of which before the restore finished (the tree still frozen)
  uint64_t present_bytes = 0;  // postcopy: bytes said present
  bool restored = false;       // the restore said it finished (the tree may run from then on)
  int64_t restore_ms = 0;      // accept to the restore's "finished"
  int64_t fill_ms = 0;         // the restore's "finished" to the last page
  int64_t gate_us_total = 0, gate_us_max = 0, batches = 0;  // reads of a userfaultfd, waiting for background ioctls
  std::vector<uint32_t> fault_us;                           // per answered fault: message seen to page in place
  // Options::trace: what happened in the first kTraceUs after the restore finished. Times are
  // microseconds since then (negative: before it).
  struct FaultEvent {
    int64_t seen;      // the fault's message seen (the read that returned it)
    uint32_t us;       // seen to answered
    uint32_t kind;     // 0 copied by us, 1 joined a background copy, 2 zero page
    uint64_t bytes;    // what its window placed (kind 0)
    uint32_t copy_us;  // placing its own page (kind 0)
    uint32_t tail_us;  // then placing the rest of its window (kind 0)
  };
  struct ReadEvent {
    int64_t at;        // the read's start (gate closed)
    uint32_t gate_us;  // waiting for background copies under way
    uint32_t msgs;
  };
  struct SliceEvent {
    int64_t at;  // the background UFFDIO_COPY's start
    uint32_t us;
    uint32_t bytes;
  };
  std::vector<FaultEvent> trace_faults;
  std::vector<ReadEvent> trace_reads;
  std::vector<SliceEvent> trace_slices;
  std::vector<SliceEvent> trace_punches;  // store ranges given back
};
static const int64_t kTraceUs = 3000000;

// Binds and listens on a unix stream socket at path (relative to the cwd).
int Listen(const std::string& path, std::string* err);

// Serves one restore until every page is in place (true) or it cannot go on
// (false, *err says why: the workload must then not run on). After a failure
// the tree's userfaultfds are left open in this process: until it exits, a
// fault on a page never placed waits instead of reading zeros.
bool Serve(const Options& o, Stats* st, std::string* err);

}  // namespace lazyfill
}  // namespace phaul
