// The fused CUDA kernels (kernels/fused_kernels.h) as differentiable ATen-level ops: each is a
// torch::autograd::Function whose forward and backward are one kernel launch each. Gradients
// flow to activations and to the SSM state, never to weights (the model is fixed; the optimizer
// differentiates with respect to a state perturbation). Shapes as engine/aten_ops.h; float32 or
// bfloat16 activations on a CUDA device, fp32 state.
#pragma once

#include <torch/torch.h>

#include <utility>

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

}  // namespace mambadiff::fused
