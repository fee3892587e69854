// Bitwise equality of tensors: the test of "the same computation" (a restored cache, a replayed
// scenario, the optimizer's zero-Δ gate), where NaN payloads and signed zeros count and NaN
// equals a NaN of the same bits. Not for numerical agreement (harness/compare.h is).
#pragma once

#include <torch/torch.h>

#include <cstring>

namespace mambadiff {

// Same dtype, same shape and the same bytes (any device, any strides).
inline bool bytes_equal(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  if (a.numel() == 0) return true;
  const torch::Tensor x = a.detach().to(torch::kCPU).contiguous(), y = b.detach().to(torch::kCPU).contiguous();
  return std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
}

}  // namespace mambadiff
