// Overflow-checked integer arithmetic for sizes that come from input files (config.json, scenario
// token lists): a product of user numbers must never wrap silently. The one place these live.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>

namespace mambadiff {

// a * b, or nullopt when the product overflows int64.
inline std::optional<int64_t> checked_mul(int64_t a, int64_t b) {
  int64_t out = 0;
  if (__builtin_mul_overflow(a, b, &out)) return std::nullopt;
  return out;
}

// a + b, or nullopt when the sum overflows int64.
inline std::optional<int64_t> checked_add(int64_t a, int64_t b) {
  int64_t out = 0;
  if (__builtin_add_overflow(a, b, &out)) return std::nullopt;
  return out;
}

// a * b and a + b on byte counts, clamped at UINT64_MAX (an estimate that saturates is still
// "more than any machine has", which is all a memory check needs).
inline uint64_t saturating_mul(uint64_t a, uint64_t b) {
  uint64_t out = 0;
  return __builtin_mul_overflow(a, b, &out) ? std::numeric_limits<uint64_t>::max() : out;
}
inline uint64_t saturating_add(uint64_t a, uint64_t b) {
  uint64_t out = 0;
  return __builtin_add_overflow(a, b, &out) ? std::numeric_limits<uint64_t>::max() : out;
}

}  // namespace mambadiff
