// The fused CUDA kernels (kernels/fused_kernels.h) as differentiable ATen-level ops: each is a
// torch::autograd::Function whose forward and backward are one kernel launch each. Gradients
// flow to activations and to the SSM state, never to weights (the model is fixed; the optimizer
// differentiates with respect to a state perturbation). Shapes as engine/aten_ops.h; float32 or
// bfloat16 activations on a CUDA device, fp32 state.
#pragma once

#include <torch/torch.h>

#include <utility>
#include <vector>

namespace mambadiff::fused {

// weight * RMSNorm(x) over the last dim.   x: [..., D] (fp32 or the weight's dtype)   weight: [D]
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// weight * RMSNorm_group(y * SiLU(gate)).   y: [B, T, I] fp32   gate: [B, T, I]   weight: [I]
torch::Tensor gated_rms_norm(const torch::Tensor& y, const torch::Tensor& gate, const torch::Tensor& weight,
                             double eps, int64_t group_size);

// SiLU(causal depthwise conv1d) with `window` as history.   inputs: [B, T, C]   window: [B, C, K]
// (no gradient)   weight: [C, K]   bias: [C] or undefined.  Returns (out [B, T, C], new_window).
// `new_window`: where the new window goes (contiguous [B, C, K] in the inputs' dtype; may be
// `window` itself, updated in place); undefined = a new tensor.
std::pair<torch::Tensor, torch::Tensor> causal_conv1d(const torch::Tensor& inputs, const torch::Tensor& window,
                                                      const torch::Tensor& weight, const torch::Tensor& bias,
                                                      torch::Tensor new_window = {});

// clamp(softplus(dt_raw + dt_bias), lo, hi) in fp32.   dt_raw: [B, T, H]   dt_bias: [H]
torch::Tensor discretize_dt(const torch::Tensor& dt_raw, const torch::Tensor& dt_bias, double lo, double hi);

// ssd_chunk_scan: the selective scan with initial and final states — for T > 1 the chunked SSD kernel
// (kernels/ssd_chunked_scan.cu, chunks of `chunk_size` tokens, tensor cores), for T <= 1 the
// sequential one (kernels/ssd_chunk_scan.cu); differentiable for T == 1, where it is
// selective_state_update.
//   x: [B, T, H, P]   dt: [B, T, H] fp32   A: [H] fp32   Bm, Cm: [B, T, G, N]   D: [H]
//   initial: [B, H, P, N] fp32 or undefined.  Returns (y [B, T, H, P] fp32, final [B, H, P, N] fp32).
// `final_state_out`: where the final state goes (may be `initial` itself, updated in place; then
// no gradient flows through the final state); undefined = a new, differentiable tensor.
std::pair<torch::Tensor, torch::Tensor> ssd_chunk_scan(const torch::Tensor& x, const torch::Tensor& dt,
                                                 const torch::Tensor& A, const torch::Tensor& Bm,
                                                 const torch::Tensor& Cm, const torch::Tensor& D,
                                                 const torch::Tensor& initial, const torch::Tensor& final_state_out = {},
                                                 int64_t chunk_size = 256);

// The decode step of a layer's mixer (T = 1) in one kernel each way (kernels/decode_step.cu): the
// conv update + SiLU, dt discretization and the state update that causal_conv1d, discretize_dt and
// ssd_chunk_scan compute at T = 1 in three launches.
//   xBC_raw: [B, 1, C] pre-conv (a column slice of in_proj's output)   dt_raw: [B, 1, H]
//   window: [B, C, K] contiguous in xBC_raw's dtype: the cache's conv window, shifted to the new
//   token in place (no gradient)   state: [B, H, P, N] fp32 contiguous
// Returns (y [B, H, P] fp32, the new state). Where no gradient is recorded the new state is `state`
// itself, updated in place; under autograd it is a new tensor and the kernel keeps a copy of the
// state it read for the backward (the caller clones nothing).
struct DecodeStepWeights {
  torch::Tensor conv_weight;  // [C, K], xBC_raw's dtype
  torch::Tensor conv_bias;    // [C] or undefined
  torch::Tensor dt_bias;      // [H]
  torch::Tensor A;            // [H] fp32
  torch::Tensor D;            // [H]
  double dt_min = 0.0, dt_max = 0.0;
  int64_t groups = 1;
};
// True when the fused kernel takes these tensors (its limits, dtypes, layout); otherwise run the ops one by one.
bool decode_step_supported(const torch::Tensor& xBC_raw, const torch::Tensor& window, const torch::Tensor& state,
                           const DecodeStepWeights& weights);
std::pair<torch::Tensor, torch::Tensor> decode_step(const torch::Tensor& xBC_raw, const torch::Tensor& dt_raw,
                                                    const torch::Tensor& window, const torch::Tensor& state,
                                                    const DecodeStepWeights& weights);

// The real-cache optimizer's statistics of one Δ in one kernel (kernels/delta_statistics.cu), into
// `stats` ([4] float64 on the rows' CUDA device): {loss, worst rank, worst margin, ‖Δ‖₂} as
// optimizer/delta_loop.cpp defines them.   rows: [V] logits per target token   target: the token ids
// deltas: the Δ tensors   loss: [] float32. Device work only (graph-capturable). Returns false and
// writes nothing where the kernel does not take the tensors (not CUDA, not contiguous fp32, more
// than 64 rows or Δs): the caller computes them with ATen ops.
bool delta_statistics(const std::vector<torch::Tensor>& rows, const std::vector<int64_t>& target,
                      const std::vector<torch::Tensor>& deltas, const torch::Tensor& loss, torch::Tensor& stats);

// The decode step's matrix-vector products with their norms folded in, one kernel each
// (kernels/decode_gemv.cu), for one token (T = 1) where nothing records a gradient:
//   norm_in_proj:        linear(rms_norm(x.to(weight dtype), norm_weight), weight, bias)
//                        x: [B, 1, D] (the residual stream) -> [B, 1, out] in the weight's dtype
//   gated_norm_out_proj: residual + linear(gated_rms_norm(y, gate, norm_weight), weight)
//                        y: [B, 1, I] fp32   gate: [B, 1, I] (a column slice)   residual: [B, 1, D]
// The *_supported checks say whether the kernel takes the tensors (else run the ops one by one).
bool norm_in_proj_supported(const torch::Tensor& x, const torch::Tensor& norm_weight, const torch::Tensor& weight,
                            const torch::Tensor& bias);
torch::Tensor norm_in_proj(const torch::Tensor& x, const torch::Tensor& norm_weight, double eps,
                           const torch::Tensor& weight, const torch::Tensor& bias);
bool gated_norm_out_proj_supported(const torch::Tensor& y, const torch::Tensor& gate, const torch::Tensor& norm_weight,
                                   int64_t group_size, const torch::Tensor& weight, const torch::Tensor& residual);
torch::Tensor gated_norm_out_proj(const torch::Tensor& y, const torch::Tensor& gate, const torch::Tensor& norm_weight,
                                  double eps, int64_t group_size, const torch::Tensor& weight,
                                  const torch::Tensor& residual);

}  // namespace mambadiff::fused
