// Causal depthwise conv1d over a cached window (prefill, continue and step alike).
#include "engine/aten_ops.h"

namespace mambadiff::aten_ops {

std::pair<torch::Tensor, torch::Tensor> causal_conv1d(const torch::Tensor& inputs, const torch::Tensor& window,
                                                      const torch::Tensor& weight, const torch::Tensor& bias) {
  const int64_t K = weight.size(1), C = weight.size(0);
  TORCH_CHECK(inputs.dim() == 3 && inputs.size(2) == C, "causal_conv1d: inputs must be [B, T, C=", C, "]");
  TORCH_CHECK(window.dim() == 3 && window.size(1) == C && window.size(2) == K,
              "causal_conv1d: window must be [B, C, K]");
  const torch::Tensor seq = inputs.transpose(1, 2);                            // [B, C, T]
  const torch::Tensor full = torch::cat({window.to(seq.scalar_type()), seq}, 2);  // [B, C, K + T]
  // The convolution and its SiLU in fp32 (fp64 for fp64 runs), rounded to the run dtype once, as
  // the fused kernels do (kernels/causal_conv1d.cu, causal-conv1d's). In bf16, conv1d's own bf16
  // output and a bf16 SiLU after it (HF's torch path) round twice: on a fuzzed model of width 1 that
  // put the SSM state 3.8x over the bf16 tolerance (docs/fuzz.md, "The tolerance class, narrowed").
  const auto f = seq.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  // The first window column is older than the K-1 inputs the first output sees.
  const torch::Tensor out = torch::conv1d(full.narrow(2, 1, full.size(2) - 1).to(f), weight.to(f).unsqueeze(1),
                                          bias.defined() ? bias.to(f) : bias,
                                          /*stride=*/torch::IntArrayRef{1}, /*padding=*/torch::IntArrayRef{0},
                                          /*dilation=*/torch::IntArrayRef{1}, /*groups=*/C);  // [B, C, T]
  torch::Tensor new_window = full.narrow(2, full.size(2) - K, K);                // [B, C, K]
  return {torch::silu(out).to(seq.scalar_type()).transpose(1, 2), new_window};
}

}  // namespace mambadiff::aten_ops
