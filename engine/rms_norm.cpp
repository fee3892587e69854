// rms_norm and gated_rms_norm (the gated RMSNorm after the scan), on ATen.
#include "engine/aten_ops.h"

namespace mambadiff::aten_ops {

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  const auto f = x.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  const torch::Tensor h = x.to(f);
  const torch::Tensor normed = h * (h.pow(2).mean(-1, /*keepdim=*/true) + eps).rsqrt();
  return weight * normed.to(weight.scalar_type());
}

torch::Tensor gated_rms_norm(const torch::Tensor& y, const torch::Tensor& gate, const torch::Tensor& weight,
                             double eps, int64_t group_size) {
  const auto f = y.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  const auto sizes = y.sizes().vec();  // [B, T, I]
  const int64_t I = sizes.back();
  TORCH_CHECK(group_size > 0 && I % group_size == 0, "gated_rms_norm: group size ", group_size,
              " does not divide ", I);
  torch::Tensor h = (y.to(f) * torch::silu(gate.to(f))).view({sizes[0], sizes[1], I / group_size, group_size});
  h = h * (h.pow(2).mean(-1, /*keepdim=*/true) + eps).rsqrt();
  return weight * h.view(sizes).to(weight.scalar_type());
}

}  // namespace mambadiff::aten_ops
