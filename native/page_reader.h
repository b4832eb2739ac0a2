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
  uint64_t bytes = 0;             // bytes laid into the buffer (= sum of range lengths on success)
  std::vector<uint64_t> missing;  // [start, end) pairs that could not be read (unmapped since the
                                  // scan, or PROT_NONE): zero-filled in the buffer
  std::vector<uint8_t> zero_map;  // optional: bit i set = page i (in buffer order) is all zeros
  uint64_t zero_pages = 0;
  uint32_t calls = 0;  // process_vm_readv calls
  int64_t ns = 0;
  std::string reason, message;  // set on failure ("process-gone", "failed")
  int err = 0;
};

// Reads `n` [start, end) pairs (page-aligned, any order) back to back into
// buf, which must hold their total length. Returns false only when the whole
// read failed (process gone); single pages that vanished are listed in
// out->missing instead.
bool ReadRanges(pid_t pid, const uint64_t* pairs, size_t n, uint8_t* buf, size_t buflen, bool zero_map,
                ReadResult* out);

// Is a 4 KiB page all zeros?
bool PageIsZero(const uint8_t* p);

}  // namespace pages
}  // namespace phaul
