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
  // The first window column is older than the K-1 inputs the first output sees.
  torch::Tensor out = torch::conv1d(full.narrow(2, 1, full.size(2) - 1), weight.unsqueeze(1), bias,
                                    /*stride=*/torch::IntArrayRef{1}, /*padding=*/torch::IntArrayRef{0},
                                    /*dilation=*/torch::IntArrayRef{1}, /*groups=*/C);  // [B, C, T]
  torch::Tensor new_window = full.narrow(2, full.size(2) - K, K);                // [B, C, K]
  return {torch::silu(out).transpose(1, 2), new_window};
}

}  // namespace mambadiff::aten_ops
