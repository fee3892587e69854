// The single-token decode update of the SSM state.
#include "engine/aten_ops.h"

namespace mambadiff::aten_ops {

std::pair<torch::Tensor, torch::Tensor> selective_state_update(const torch::Tensor& x, const torch::Tensor& dt,
                                                               const torch::Tensor& A, const torch::Tensor& Bm,
                                                               const torch::Tensor& Cm, const torch::Tensor& D,
                                                               const torch::Tensor& state) {
  const int64_t H = x.size(1), G = Bm.size(1);
  TORCH_CHECK(H % G == 0, "selective_state_update: heads ", H, " not a multiple of groups ", G);
  const auto f = state.scalar_type();
  const torch::Tensor xs = x.to(f);                                         // [B, H, P]
  const torch::Tensor dtf = dt.to(f);                                       // [B, H]
  const torch::Tensor Bh = Bm.to(f).repeat_interleave(H / G, 1);            // [B, H, N]
  const torch::Tensor Ch = Cm.to(f).repeat_interleave(H / G, 1);            // [B, H, N]
  const torch::Tensor decay = (dtf * A.to(f)).exp();                        // [B, H]
  const torch::Tensor new_state = state * decay.unsqueeze(-1).unsqueeze(-1) +
                                  (dtf.unsqueeze(-1) * xs).unsqueeze(-1) * Bh.unsqueeze(2);  // [B, H, P, N]
  const torch::Tensor y = torch::einsum("bhpn,bhn->bhp", {new_state, Ch}) + D.to(f).view({1, H, 1}) * xs;
  return {y, new_state};
}

}  // namespace mambadiff::aten_ops
