// The `reference` path: the oracle (SPEC §4). A sequential recurrence, one token at a time,
// computed in float64 with plain loops over raw buffers, written independently of the ATen code
// in engine/ (it shares only the config, the checkpoint and the cache). Slow is fine; wrong is not.
// Its cache holds float64 states, so the oracle never rounds its own state.
#pragma once

#include "engine/execution_path.h"

namespace mambadiff {

// The shape of one token's SSM update; G divides H (Mamba2Config::validate checks it).
struct SsmShape {
  int64_t heads = 1, head_dim = 1, state_size = 1, groups = 1;  // H, P, N, G
  double time_step_min = 0.0, time_step_max = 0.0;              // the dt clamp (time_step_limit)
};

// The oracle's recurrence for one token of one batch row, in Scalar (every operation rounded to
// it): dt = clamp(softplus(dt_raw + dt_bias)), s = exp(dt * A) * s + dt * x B, y = C.s + D x with
// A = -exp(A_log); head h reads group h / (H/G). The reference path runs it per token; the
// fuzz target scan_diff runs it on raw scan inputs. Instantiated for double, float, BFloat16.
//   xs: [H, P]   Bv, Cv: [G, N]   dt_raw, dt_bias, A_log, D: [H]   state: [H, P, N] (updated)   y: [H, P]
template <typename Scalar>
void ssm_token_step(const SsmShape& shape, const Scalar* xs, const Scalar* Bv, const Scalar* Cv,
                    const Scalar* dt_raw, const Scalar* dt_bias, const Scalar* A_log, const Scalar* D,
                    Scalar* state, Scalar* y);

//
// The same loops instantiated in float32 or bfloat16 are the "plain low-precision implementation of
// the same math" whose error against the float64 oracle sets the tolerance of a path computing in
// that dtype (SPEC §7, FlashAttention's rule). Those instances are named "plain-float32" and
// "plain-bfloat16". float32 rounds every operation, the accumulators too. bfloat16 does what every
// real bf16 kernel does: activations, weights and the conv window STORED in bf16 (each matmul,
// norm, conv and scan output rounded once), everything ACCUMULATED in fp32 (sums, norms' reductions,
// the scan), the SSM state and dt_bias, A_log, D kept in fp32. (Rounding the accumulators to bf16
// too, as an earlier version did, put the bf16 tolerance ~8x above a correct kernel's error, where a
// bf16-only bug of a few percent passed: docs/mutants.md.)
template <typename Scalar>
class SequentialScanPath : public ExecutionPath {
 public:
  explicit SequentialScanPath(const Mamba2Checkpoint& checkpoint);

  std::string name() const override;
  Mamba2Cache new_cache(int64_t batch_size) const override;

 protected:
  ForwardOutput run(const torch::Tensor& tokens, Mamba2Cache& cache, Branch branch) override;

 private:
  Mamba2Weights w_;  // values stored in Scalar, held in its accumulation type (float for bfloat16); CPU
};

using ReferencePath = SequentialScanPath<double>;
using PlainFloat32Path = SequentialScanPath<float>;
using PlainBFloat16Path = SequentialScanPath<c10::BFloat16>;

}  // namespace mambadiff
