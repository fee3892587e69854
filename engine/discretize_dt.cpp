// discretize_dt on ATen: the step sizes dt from the in_proj output.
#include "engine/aten_ops.h"

namespace mambadiff::aten_ops {

torch::Tensor discretize_dt(const torch::Tensor& dt_raw, const torch::Tensor& dt_bias, double lo, double hi) {
  const auto f = dt_bias.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  // torch's softplus (threshold 20: linear above), as HF and mamba_ssm's torch paths use.
  return torch::softplus(in_dtype(dt_raw, f) + in_dtype(dt_bias, f)).clamp(lo, hi);
}

}  // namespace mambadiff::aten_ops
