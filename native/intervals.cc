#include "intervals.h"

#include <stddef.h>

#include <algorithm>

namespace phaul {
namespace dirty {

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

}  // namespace dirty
}  // namespace phaul
