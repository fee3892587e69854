// The logical kernels of a Mamba2 layer, written with ATen ops (the `chunked` path; CPU and GPU).
// Each has a twin in oracles/ (float64 loops) and, for CUDA, in kernels/. Shapes are in the order
// of their dimensions; B batch, T tokens, H heads, P head_dim, G groups, N state_size, C conv_dim,
// K conv_kernel, I d_inner.
//
// One name per op across the paths (engine/ here, cuda_path/fused_ops.h, kernels/fused_kernels.h,
// ChunkedPath's virtuals and the dispatch trace); each op is implemented in the file of its name:
//   rms_norm, gated_rms_norm   engine/rms_norm.cpp            kernels/rms_norm.cu
//   causal_conv1d              engine/causal_conv1d.cpp       kernels/causal_conv1d.cu
//   discretize_dt              engine/discretize_dt.cpp       kernels/discretize_dt.cu
//   ssd_chunk_scan             engine/ssd_chunk_scan.cpp      kernels/ssd_chunk_scan.cu
//   selective_state_update     engine/selective_state_update.cpp   (cuda: ssd_chunk_scan at T = 1;
//                                                                  its backward in ssd_chunk_scan.cu)
#pragma once

#include <torch/torch.h>

#include <utility>

namespace mambadiff::aten_ops {

// t in dtype f: t itself when it already is (a conversion with nothing to do is not dispatched; the
// decode step's kernels run per token, and on small models each ATen call's fixed cost is their cost).
inline torch::Tensor in_dtype(const torch::Tensor& t, torch::ScalarType f) {
  return t.scalar_type() == f ? t : t.to(f);
}

// Causal depthwise conv1d + SiLU over `inputs` with `window` as the K previous inputs.
//   inputs: [B, T, C]   window: [B, C, K] (the last K pre-conv inputs; zeros = no history)
//   weight: [C, K]      bias: [C] or undefined
// Returns (out: [B, T, C], new_window: [B, C, K] = the last K of window ++ inputs).
std::pair<torch::Tensor, torch::Tensor> causal_conv1d(const torch::Tensor& inputs, const torch::Tensor& window,
                                                      const torch::Tensor& weight, const torch::Tensor& bias);

// The chunked SSD scan (Mamba2 paper, "state space duality"): within a chunk of Q tokens a
// quadratic (attention-like) form, between chunks the state is passed sequentially.
//   x: [B, T, H, P]   dt: [B, T, H] (after softplus and clamp)   A: [H] (negative)
//   Bm, Cm: [B, T, G, N]   D: [H]   initial_state: [B, H, P, N] or undefined (zeros)
// The math runs in fp32 (fp64 if x is fp64), like mamba_ssm's kernels accumulate.
// Returns (y: [B, T, H, P] in fp32/fp64, final_state: [B, H, P, N] in fp32/fp64).
std::pair<torch::Tensor, torch::Tensor> ssd_chunk_scan(const torch::Tensor& x, const torch::Tensor& dt,
                                                       const torch::Tensor& A, const torch::Tensor& Bm,
                                                       const torch::Tensor& Cm, const torch::Tensor& D,
                                                       const torch::Tensor& initial_state, int64_t chunk_size);

// Segment sums of v over its last dim, the decays of the chunked scan: seg[..., i, j] =
// Σ_{k=j+1..i} v_k for j <= i, summed directly rather than as cumsum_i − cumsum_j (with strong decay
// the cumulative sums run into the hundreds, and the difference of two such fp32 sums loses ~1e-5
// relative in the small segments that matter: measured cache-state error 7.8e-6 against a derived
// tolerance of 3.3e-6 on a medium-decay model); -inf above the diagonal, clamped to <= 0.
//   v: [..., L]   Returns [..., L(i), L(j)].
torch::Tensor segment_sums(const torch::Tensor& v);

// One decode step of the recurrence, s = exp(dt*A) * s + dt * (x outer B); y = C.s + D*x.
//   x: [B, H, P]   dt: [B, H]   A: [H]   Bm, Cm: [B, G, N]   D: [H]   state: [B, H, P, N]
// Returns (y: [B, H, P], new_state: [B, H, P, N]), both in state's dtype (fp32 or fp64).
std::pair<torch::Tensor, torch::Tensor> selective_state_update(const torch::Tensor& x, const torch::Tensor& dt,
                                                               const torch::Tensor& A, const torch::Tensor& Bm,
                                                               const torch::Tensor& Cm, const torch::Tensor& D,
                                                               const torch::Tensor& state);

// y * SiLU(gate), RMS-normalized over groups of `group_size` channels (fp32 reductions), times weight.
//   y, gate: [B, T, I]   weight: [I]   Returns [B, T, I] in weight's dtype.
torch::Tensor gated_rms_norm(const torch::Tensor& y, const torch::Tensor& gate, const torch::Tensor& weight,
                             double eps, int64_t group_size);

// weight * RMSNorm(x) with an fp32 reduction.   x: [B, T, D]   weight: [D]; returns weight's dtype.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// clamp(softplus(dt_raw + dt_bias), lo, hi) in fp32.   dt_raw: [B, T, H]   dt_bias: [H]
torch::Tensor discretize_dt(const torch::Tensor& dt_raw, const torch::Tensor& dt_bias, double lo, double hi);

}  // namespace mambadiff::aten_ops
