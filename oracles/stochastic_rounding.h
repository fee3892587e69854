// Stochastic rounding: arithmetic of a low precision whose every result is rounded to one of its two
// neighbours at random, with the probability of each proportional to its nearness (Monte Carlo
// arithmetic, Parker 1997; Verificarlo's "sr" mode). The tolerance baselines use it
// (harness/compare.h): one run of the plain float32 loops rounds deterministically and on a tensor of
// two or three elements can be lucky -- a sum that cancels to 1 % of its terms, rounded exactly where
// the oracle's order happens to put it, measured 1e-7 where two independent correct float32
// implementations (the chunked path and HF's torch path) were both off by 3-6e-6. Runs of the same
// loops under stochastic rounding sample the spread a correct implementation may have: rounding at
// another place is another draw from the same distribution.
//
// Rounded<kBits, kMinExp, kMaxExp> holds a float64 on the grid of a binary format with kBits
// significant bits (24: float32, 8: bfloat16, 11: float16). Its exponent range is float64's unless
// given: float32 and bfloat16 share float32's range, which no value of these models approaches, so
// no overflow or subnormals are modelled for them (the deterministic plain loops cover those).
// float16's range is narrow (largest finite 65504, normal down to 2^-14 = 6.1e-5) and is modelled,
// as cheaply as the hardware does it: below 2^kMinExp the grid is the subnormals' fixed step
// 2^(kMinExp - kBits + 1) (2^-24 for float16), and a result rounded above the largest finite value
// is an infinity. Its random bits come from the value and the seed of the RoundingSeed open on the
// thread, so a run is reproducible from its seed.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace mambadiff::sr {

// The random bits of a rounding: a hash of the exact result's bits and this thread's seed
// (MurmurHash3's 64-bit finalizer, public domain), not a generator's next draw. So a run's rounding
// depends only on its seed and on the values, not on how many roundings came before: the loops may
// evaluate in any order (matvec interleaves four rows) and a run is still its seed's. (Measured no
// slower than a one-multiply LCG: `check` 10-11 s either way.) A result that occurs twice in a run
// rounds the same way twice; another seed rounds it independently. No seed open: seed 0.
namespace detail {
inline thread_local uint64_t open_seed = 0;
}  // namespace detail
inline uint64_t random_bits_for(uint64_t value_bits) {
  uint64_t h = value_bits ^ detail::open_seed;
  h ^= h >> 33;
  h *= 0xFF51AFD7ED558CCDull;
  h ^= h >> 33;
  h *= 0xC4CEB9FE1A85EC53ull;
  return h ^ (h >> 33);
}

// Makes `seed` this thread's for its lifetime (a path's run() opens its own), restoring the
// previous one after.
class RoundingSeed {
 public:
  explicit RoundingSeed(uint64_t seed) : previous_(detail::open_seed) {
    // Mixed once, so that seeds 1, 2, 3 differ in every bit, not only the last two.
    detail::open_seed = 0;
    detail::open_seed = random_bits_for(seed + 0x9E3779B97F4A7C15ull);
  }
  ~RoundingSeed() { detail::open_seed = previous_; }
  RoundingSeed(const RoundingSeed&) = delete;
  RoundingSeed& operator=(const RoundingSeed&) = delete;

 private:
  uint64_t previous_;
};

// 2^e as a constant expression (std::ldexp is not constexpr).
constexpr double power_of_two(int e) {
  double v = 1.0;
  for (; e > 0; --e) v *= 2.0;
  for (; e < 0; ++e) v *= 0.5;
  return v;
}

// float64's own range: no subnormal grid or overflow of the format's own is modelled.
inline constexpr int kFloat64MinExp = -1022;
inline constexpr int kFloat64MaxExp = 1023;

// v rounded to kBits significant bits: kept when it is on the grid, else its neighbour of larger
// magnitude with probability (distance from the smaller one) / ulp, the smaller one otherwise. The
// magnitude is rounded in the bit pattern (the carry of an increment moves into the exponent, as it
// must); NaN and infinities pass through. With a format's range (kMinExp, kMaxExp narrower than
// float64's): below 2^kMinExp onto the fixed subnormal grid, above the largest finite value to +-inf.
template <int kBits, int kMinExp = kFloat64MinExp, int kMaxExp = kFloat64MaxExp>
[[gnu::always_inline]] inline double round_stochastically(double v) {
  static_assert(kBits >= 2 && kBits <= 52, "a format narrower than float64");
  if (!std::isfinite(v)) return v;
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  if constexpr (kMinExp > kFloat64MinExp) {
    constexpr double kMinNormal = power_of_two(kMinExp);
    if (std::abs(v) < kMinNormal) {
      // The subnormals: multiples of one fixed step. v / step is exact (a power of two); its
      // fraction above the lower neighbour is the probability of rounding up.
      constexpr double kStep = power_of_two(kMinExp - kBits + 1);
      const double scaled = v / kStep;
      const double lower = std::floor(scaled);
      const double fraction = scaled - lower;  // exact: |scaled| < 2^kBits
      if (fraction == 0.0) return v;
      const double draw = static_cast<double>(random_bits_for(bits) >> 11) * power_of_two(-53);  // [0, 1)
      return (draw < fraction ? lower + 1.0 : lower) * kStep;
    }
  }
  constexpr int kDropped = 53 - kBits;  // float64 has 53 significant bits
  constexpr uint64_t kMask = (uint64_t{1} << kDropped) - 1;
  const uint64_t below = bits & kMask;  // the part of the magnitude under the last kept bit
  if (below == 0) return v;             // on the grid: exact, nothing to round
  const bool up = (random_bits_for(bits) >> (64 - kDropped)) < below;
  bits &= ~kMask;
  if (up) bits += uint64_t{1} << kDropped;
  std::memcpy(&v, &bits, sizeof v);
  if constexpr (kMaxExp < kFloat64MaxExp) {
    // The largest finite value: all kBits significant bits set at the top exponent (float16: 65504).
    constexpr double kMaxFinite = (2.0 - power_of_two(1 - kBits)) * power_of_two(kMaxExp);
    if (std::abs(v) > kMaxFinite) return std::copysign(std::numeric_limits<double>::infinity(), v);
  }
  return v;
}

template <int kBits, int kMinExp = kFloat64MinExp, int kMaxExp = kFloat64MaxExp>
class Rounded {
 public:
  static constexpr int kSignificantBits = kBits;
  Rounded() = default;
  Rounded(double v) : v_(round_stochastically<kBits, kMinExp, kMaxExp>(v)) {}  // NOLINT: implicit, as A(0) and A(eps) need
  template <int kOtherBits, int kOtherMin, int kOtherMax>
  explicit Rounded(Rounded<kOtherBits, kOtherMin, kOtherMax> other) : Rounded(static_cast<double>(other)) {}
  explicit operator double() const { return v_; }

  // The exact float64 result of two kBits-bit operands (kBits <= 26: products are exact; sums are
  // unless the exponents differ by more than 29), then rounded once.
  friend Rounded operator+(Rounded a, Rounded b) { return Rounded(a.v_ + b.v_); }
  friend Rounded operator-(Rounded a, Rounded b) { return Rounded(a.v_ - b.v_); }
  friend Rounded operator*(Rounded a, Rounded b) { return Rounded(a.v_ * b.v_); }
  friend Rounded operator/(Rounded a, Rounded b) { return Rounded(a.v_ / b.v_); }
  friend Rounded operator-(Rounded a) { return from_grid(-a.v_); }
  // acc + a * b rounded once, as a fused multiply-add does (what float32 dot products run on): the
  // product of two kBits-bit values is exact in float64, the sum rounds to float64 then to kBits.
  friend Rounded multiply_add(Rounded acc, Rounded a, Rounded b) { return Rounded(acc.v_ + a.v_ * b.v_); }

 private:
  static Rounded from_grid(double v) {  // v is on the grid already (a negation)
    Rounded r;
    r.v_ = v;
    return r;
  }
  double v_ = 0.0;
};

// The formats the baselines sample: every operation rounded stochastically, float32's, and for
// bfloat16 and float16 the stored activations at 8 or 11 bits over float32 sums (the plain bf16 and
// fp16 loops' arithmetic); float16 with its own range (65504 largest, subnormals below 2^-14).
// A bf16 implementation that stores at other places (the chunked path keeps the scan's y in fp32
// where mamba_ssm's kernel stores it in bf16) differs from the plain loops by whole bf16 roundings;
// on a fuzzed model of width 1, whose RMSNorm is a sign function, that flipped a logit's sign.
using StochasticFloat32 = Rounded<24>;
using StochasticBFloat16 = Rounded<8>;
using StochasticFloat16 = Rounded<11, -14, 15>;

}  // namespace mambadiff::sr
