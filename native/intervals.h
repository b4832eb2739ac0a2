// Sorted, disjoint, merged [start, end) intervals of addresses: what the dirty
// tracker has registered and what is mapped.
#pragma once
#include <stdint.h>

#include <utility>
#include <vector>

namespace phaul {
namespace dirty {

class Intervals {
 public:
  void Add(uint64_t s, uint64_t e);
  void Subtract(uint64_t s, uint64_t e);
  void IntersectWith(const Intervals& o);
  bool Covers(uint64_t s, uint64_t e) const;
  bool Overlaps(uint64_t s, uint64_t e) const;
  // First interval ending after pos, clipped to start at >= pos.
  bool NextFrom(uint64_t pos, uint64_t* s, uint64_t* e) const;
  Intervals Minus(const Intervals& o) const;
  const std::vector<std::pair<uint64_t, uint64_t>>& items() const { return v_; }
  uint64_t Bytes() const;
  void Clear() { v_.clear(); }

 private:
  std::vector<std::pair<uint64_t, uint64_t>> v_;
};

}  // namespace dirty
}  // namespace phaul
