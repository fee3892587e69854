// The chunked SSD scan on ATen ops. Notation: Q chunk size, nc number of chunks, Acs the
// within-chunk cumulative sum of dt*A (non-increasing, since A < 0 and dt >= 0).
#include "engine/aten_ops.h"

#include <limits>
#include <vector>

namespace mambadiff::aten_ops {

torch::Tensor segment_sums(const torch::Tensor& v) {
  // Row i of the masked matrix holds v_i below the diagonal; its cumulative sum down the rows is the
  // segment sum. Above the diagonal: -inf (exp = 0); clamped to <= 0 before exp, as mamba_ssm PR #713
  // does (direct sums of non-positive terms cannot round above 0: a guard).
  const int64_t L = v.size(-1);
  const auto opts_bool = torch::TensorOptions().dtype(torch::kBool).device(v.device());
  std::vector<int64_t> sizes = v.sizes().vec();
  sizes.push_back(L);
  const torch::Tensor not_below = torch::ones({L, L}, opts_bool).triu();     // j >= i
  const torch::Tensor sums = v.unsqueeze(-1).expand(sizes).masked_fill(not_below, 0.0).cumsum(-2);
  const torch::Tensor above = torch::ones({L, L}, opts_bool).triu(1);        // j > i
  return sums.masked_fill(above, -std::numeric_limits<double>::infinity()).clamp_max(0.0);
}

std::pair<torch::Tensor, torch::Tensor> ssd_chunk_scan(const torch::Tensor& x_in, const torch::Tensor& dt_in,
                                                       const torch::Tensor& A_in, const torch::Tensor& B_in,
                                                       const torch::Tensor& C_in, const torch::Tensor& D_in,
                                                       const torch::Tensor& initial_state, int64_t Q) {
  TORCH_CHECK(Q > 0, "ssd_chunk_scan: chunk_size must be positive");
  const int64_t Bsz = x_in.size(0), T = x_in.size(1), H = x_in.size(2), P = x_in.size(3);
  const int64_t G = B_in.size(2), N = B_in.size(3);
  TORCH_CHECK(H % G == 0, "ssd_chunk_scan: heads ", H, " not a multiple of groups ", G);
  const auto f = x_in.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  namespace F = torch::nn::functional;

  // Head h = g R + r reads group g (R = H / G heads a group; HF PR #37533's order): the heads are
  // viewed as [G, R] and B, C stay [.., G, N], never copied per head.
  const int64_t R = H / G;
  torch::Tensor x = in_dtype(x_in, f);                                    // [B, T, H, P]
  torch::Tensor dt = in_dtype(dt_in, f);                                  // [B, T, H]
  torch::Tensor Bm = in_dtype(B_in, f);                                   // [B, T, G, N]
  torch::Tensor Cm = in_dtype(C_in, f);                                   // [B, T, G, N]
  const torch::Tensor A = in_dtype(A_in, f);                              // [H]
  const torch::Tensor D = in_dtype(D_in, f);                              // [H]

  // Pad T to a multiple of Q with dt = 0: a padded token decays nothing (exp(0) = 1) and adds
  // nothing (dt * x * B = 0), so the final state is the state after token T exactly.
  const int64_t pad = (Q - T % Q) % Q, nc = (T + pad) / Q;
  if (pad > 0) {
    x = F::pad(x, F::PadFuncOptions({0, 0, 0, 0, 0, pad}));
    dt = F::pad(dt, F::PadFuncOptions({0, 0, 0, pad}));
    Bm = F::pad(Bm, F::PadFuncOptions({0, 0, 0, 0, 0, pad}));
    Cm = F::pad(Cm, F::PadFuncOptions({0, 0, 0, 0, 0, pad}));
  }
  x = x.reshape({Bsz, nc, Q, G, R, P});
  dt = dt.reshape({Bsz, nc, Q, H});
  Bm = Bm.reshape({Bsz, nc, Q, G, N});
  Cm = Cm.reshape({Bsz, nc, Q, G, N});

  const torch::Tensor xdt = x * dt.reshape({Bsz, nc, Q, G, R, 1});           // [B, nc, Q, G, R, P]
  const torch::Tensor dA = (dt * A).permute({0, 3, 1, 2});                 // [B, H, nc, Q], <= 0
  const torch::Tensor Acs = dA.cumsum(-1);                                 // [B, H, nc, Q]

  const torch::Tensor seg = segment_sums(dA);                              // [B, H, nc, Q(i), Q(j)]

  // C·B, the diagonal blocks and C·S (before its element-wise decay, which einsum also applies after
  // contracting over n) are written as the batched matmuls einsum reduces them to: the same bmm on
  // the same operands, so bit for bit einsum's result (2,000 random fuzz-range shapes in float32 and
  // 1,000 in float64 compared, 2026-12-02), without einsum's dozens of permute, reshape and view
  // calls -- on small models the scan's cost is its ATen calls. chunk_states stays an einsum: written
  // as (B * decay) then a matmul over j it differed in the last bit in 69 of 300 cases.

  // 1. Intra-chunk (diagonal blocks): y_i += sum_{j<=i} (C_i.B_j) exp(seg[i, j]) dt_j x_j. C·B is
  // computed once per group.
  const torch::Tensor CB = torch::matmul(Cm.permute({0, 3, 1, 2, 4}), Bm.permute({0, 3, 1, 4, 2}));  // [B, G, nc, Q, Q]
  const torch::Tensor L = CB.unsqueeze(2) * seg.exp().reshape({Bsz, G, R, nc, Q, Q});  // [B, G, R, nc, Q, Q]
  const torch::Tensor y_diag = torch::matmul(L.permute({0, 3, 1, 2, 4, 5}), xdt.permute({0, 1, 3, 4, 2, 5}))
                                   .permute({0, 1, 4, 2, 3, 5});          // [B, nc, Q, G, R, P]

  // 2. Each chunk's contribution to the state at its end, starting from zero: token j decays by
  // seg[Q-1, j] to the chunk's end.
  const torch::Tensor decay_to_end = seg.select(3, Q - 1).exp().reshape({Bsz, G, R, nc, Q});  // [B, G, R, nc, Q]
  const torch::Tensor chunk_states =
      torch::einsum("bcjgn,bgrcj,bcjgrp->bcgrpn", {Bm, decay_to_end, xdt}).reshape({Bsz, nc, H, P, N});

  // 3. Inter-chunk recurrence over chunks (sequential; nc is small): the state entering chunk c.
  const torch::Tensor chunk_decay = Acs.select(3, Q - 1).exp();            // [B, H, nc]
  torch::Tensor s = initial_state.defined() ? in_dtype(initial_state, f) : torch::zeros({Bsz, H, P, N}, x.options());
  std::vector<torch::Tensor> entering;
  entering.reserve(static_cast<size_t>(nc));
  for (int64_t c = 0; c < nc; ++c) {
    entering.push_back(s);
    s = s * chunk_decay.select(2, c).unsqueeze(-1).unsqueeze(-1) + chunk_states.select(1, c);
  }
  const torch::Tensor S = torch::stack(entering, 1);                       // [B, nc, H, P, N]

  // 4. Off-diagonal blocks: y_i += exp(Acs_i) C_i . S_c.
  const torch::Tensor CS =
      torch::matmul(Cm.permute({0, 1, 3, 2, 4}), S.reshape({Bsz, nc, G, R * P, N}).transpose(-1, -2))
          .reshape({Bsz, nc, G, Q, R, P});                                 // [B, nc, G, Q, R, P]
  const torch::Tensor decay_in = Acs.exp().reshape({Bsz, G, R, nc, Q}).permute({0, 3, 1, 4, 2});  // [B, nc, G, Q, R]
  const torch::Tensor y_off = (CS * decay_in.unsqueeze(-1)).permute({0, 1, 3, 2, 4, 5});  // [B, nc, Q, G, R, P]

  torch::Tensor y = (y_diag + y_off + x * D.view({1, 1, 1, G, R, 1})).reshape({Bsz, nc * Q, H, P});
  return {y.narrow(1, 0, T), s};
}

}  // namespace mambadiff::aten_ops
