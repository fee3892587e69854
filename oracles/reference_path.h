// The `reference` path: the oracle (SPEC §4). A sequential recurrence, one token at a time,
// computed in float64 with plain loops over raw buffers, written independently of the ATen code
// in engine/ (it shares only the config, the checkpoint and the cache). Slow is fine; wrong is not.
// Its cache holds float64 states, so the oracle never rounds its own state.
#pragma once

#include <type_traits>

#include "engine/execution_path.h"
#include "oracles/stochastic_rounding.h"

namespace mambadiff {

// The torch dtype a scalar type models (weights are rounded to it, the path reports it) and the one
// of the buffers holding it: the same for the hardware types; float64 for sr::Rounded, a float64 on
// the grid of the modelled format.
template <typename S> inline constexpr torch::ScalarType kDtype = torch::kFloat64;
template <> inline constexpr torch::ScalarType kDtype<float> = torch::kFloat32;
template <> inline constexpr torch::ScalarType kDtype<c10::BFloat16> = torch::kBFloat16;
template <> inline constexpr torch::ScalarType kDtype<c10::Half> = torch::kFloat16;
template <> inline constexpr torch::ScalarType kDtype<sr::StochasticFloat32> = torch::kFloat32;
template <> inline constexpr torch::ScalarType kDtype<sr::StochasticBFloat16> = torch::kBFloat16;
template <> inline constexpr torch::ScalarType kDtype<sr::StochasticFloat16> = torch::kFloat16;

template <typename S> struct HeldInFloat64 : std::false_type {};
template <int kBits, int kMinExp, int kMaxExp>
struct HeldInFloat64<sr::Rounded<kBits, kMinExp, kMaxExp>> : std::true_type {};
template <typename S>
inline constexpr torch::ScalarType kStorage = HeldInFloat64<S>::value ? torch::kFloat64 : kDtype<S>;

// The elements of a CPU tensor of kStorage<S> as S.
template <typename S>
S* data(const torch::Tensor& t) {
  if constexpr (HeldInFloat64<S>::value) {
    static_assert(sizeof(S) == sizeof(double) && std::is_standard_layout_v<S>, "a float64 in a wrapper");
    return reinterpret_cast<S*>(t.data_ptr<double>());
  } else {
    return t.data_ptr<S>();
  }
}

// The shape of one token's SSM update; G divides H (Mamba2Config::validate checks it).
struct SsmShape {
  int64_t heads = 1, head_dim = 1, state_size = 1, groups = 1;  // H, P, N, G
  double time_step_min = 0.0, time_step_max = 0.0;              // the dt clamp (time_step_limit)
};

// The oracle's recurrence for one token of one batch row, in Scalar (every operation rounded to
// it): dt = clamp(softplus(dt_raw + dt_bias)), s = exp(dt * A) * s + dt * x B, y = C.s + D x with
// A = -exp(A_log); head h reads group h / (H/G). The reference path runs it per token; the
// fuzz target scan_diff runs it on raw scan inputs. Instantiated for double, float, BFloat16 and
// sr::StochasticFloat32.
//   xs: [H, P]   Bv, Cv: [G, N]   dt_raw, dt_bias, A_log, D: [H]   state: [H, P, N] (updated)   y: [H, P]
template <typename Scalar>
void ssm_token_step(const SsmShape& shape, const Scalar* xs, const Scalar* Bv, const Scalar* Cv,
                    const Scalar* dt_raw, const Scalar* dt_bias, const Scalar* A_log, const Scalar* D,
                    Scalar* state, Scalar* y);

//
// The same loops instantiated in float32, bfloat16 or float16 are the "plain low-precision
// implementation of the same math" whose error against the float64 oracle sets the tolerance of a
// path computing in that dtype (SPEC §7, FlashAttention's rule). Those instances are named
// "plain-float32", "plain-bfloat16" and "plain-float16". float32 rounds every operation, the
// accumulators too. bfloat16 does what every real bf16 kernel does: activations, weights and the
// conv window STORED in bf16 (each matmul, norm, conv and scan output rounded once), everything
// ACCUMULATED in fp32 (sums, norms' reductions, the scan), the SSM state and dt_bias, A_log, D kept
// in fp32. (Rounding the accumulators to bf16 too, as an earlier version did, put the bf16 tolerance
// ~8x above a correct kernel's error, where a bf16-only bug of a few percent passed: docs/mutants.md.)
// float16 is bfloat16's sibling -- stored in fp16 (11 significant bits, 3 more than bf16), fp32
// accumulation and state -- as mamba_ssm's and vLLM's kernels run an fp16 model. Its range is part of
// the model: c10::Half rounds as the hardware does (a stored value above 65504 becomes inf, below
// 2^-14 = 6.1e-5 it is subnormal, below 2^-25 zero), and sr::StochasticFloat16 models the same range.
//
// Instantiated in sr::StochasticFloat32 / StochasticBFloat16 / StochasticFloat16, the same loops round every result
// stochastically (oracles/stochastic_rounding.h) from a stream seeded by `rounding_seed`: runs with
// other seeds sample the rounding error a correct implementation of that precision may have, which
// the tolerance baselines take the worst of (harness/compare.h derive_baseline). Their tensors are
// float64 holding values of the modelled format; the path reports the modelled dtype.
template <typename Scalar>
class SequentialScanPath : public ExecutionPath {
 public:
  explicit SequentialScanPath(const Mamba2Checkpoint& checkpoint, uint64_t rounding_seed = 0);

  std::string name() const override;
  Mamba2Cache new_cache(int64_t batch_size) const override;
  // Another run of the stochastic instances from another seed, without copying the weights again.
  void set_rounding_seed(uint64_t seed) { rounding_seed_ = seed; }

 protected:
  ForwardOutput run(const torch::Tensor& tokens, Mamba2Cache& cache, Branch branch) override;

 private:
  Mamba2Weights w_;  // values stored in Scalar, held in its accumulation type (float for bfloat16); CPU
  uint64_t rounding_seed_;  // the stochastic instances' seed (their name carries it; unused by the others)
};

using ReferencePath = SequentialScanPath<double>;
using PlainFloat32Path = SequentialScanPath<float>;
using PlainBFloat16Path = SequentialScanPath<c10::BFloat16>;
using PlainFloat16Path = SequentialScanPath<c10::Half>;
using StochasticFloat32Path = SequentialScanPath<sr::StochasticFloat32>;
using StochasticBFloat16Path = SequentialScanPath<sr::StochasticBFloat16>;
using StochasticFloat16Path = SequentialScanPath<sr::StochasticFloat16>;

}  // namespace mambadiff
