// Reading pages of another process into our memory with process_vm_readv, for
// pre-copy. Pure C++ core; the N-API binding (readPages) is in page_reader.cc.
#pragma once
#include <stdint.h>
#include <sys/types.h>

#include <string>
#include <vector>

namespace phaul {
namespace pages {

struct ReadResult {
  uint64_t bytes = 0;                // bytes laid into the buffer (= sum of range lengths on success)
  std::vector<uint64_t> missing;     // [start, end) pairs that could not be read at all (unmapped
                                     // since the scan): zero-filled in the buffer
  std::vector<uint8_t> zero_map;     // optional: bit i set = page i (in buffer order) is all zeros
                                     // (never set for a missing page)
  std::vector<uint8_t> missing_map;  // with zero_map, when a page is missing: bit i set = page i
                                     // could not be read (its bytes are no copy of anything)
  uint64_t zero_pages = 0;
  uint64_t forced_pages = 0;  // read through /proc/PID/mem: pages process_vm_readv could not
                              // read (PROT_NONE...), one at a time
  uint32_t calls = 0;         // process_vm_readv and pread calls
  int64_t ns = 0;
  std::string reason, message;  // set on failure ("process-gone", "failed")
  int err = 0;
};

// Reads `n` [start, end) pairs (page-aligned, any order) back to back into
// buf, which must hold their total length. A page process_vm_readv cannot
// read (it stops at a mapping without read access) is read through
// /proc/PID/mem, which may (FOLL_FORCE): a PROT_NONE page holds data like any
// other. Returns false only when the whole read failed (process gone); pages
// that neither can read (unmapped since the scan) are listed in out->missing.
bool ReadRanges(pid_t pid, const uint64_t* pairs, size_t n, uint8_t* buf, size_t buflen, bool zero_map,
                ReadResult* out);

// Is a 4 KiB page all zeros?
bool PageIsZero(const uint8_t* p);

}  // namespace pages
}  // namespace phaul
