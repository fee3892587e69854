// engine/ssd_chunk_scan.cpp, copied, with the bugs of ScanBug marked MUTANT(...). Notation as
// there: Q chunk size, nc number of chunks, Acs the within-chunk cumulative sum of dt*A.
#include "mutants/buggy_ssd_chunk_scan.h"

#include <limits>
#include <vector>

#include "engine/aten_ops.h"

namespace mambadiff::mutants {

std::pair<torch::Tensor, torch::Tensor> buggy_ssd_chunk_scan(const torch::Tensor& x_in, const torch::Tensor& dt_in,
                                                             const torch::Tensor& A_in, const torch::Tensor& B_in,
                                                             const torch::Tensor& C_in, const torch::Tensor& D_in,
                                                             const torch::Tensor& initial_state, int64_t Q,
                                                             ScanBug bug) {
  TORCH_CHECK(Q > 0, "buggy_ssd_chunk_scan: chunk_size must be positive");
  const int64_t Bsz = x_in.size(0), T = x_in.size(1), H = x_in.size(2), P = x_in.size(3);
  const int64_t G = B_in.size(2), N = B_in.size(3);
  TORCH_CHECK(H % G == 0, "buggy_ssd_chunk_scan: heads ", H, " not a multiple of groups ", G);
  const auto f = x_in.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  namespace F = torch::nn::functional;

  // Head h = g R + r reads group g (R = H / G heads a group; HF PR #37533's order): the heads are
  // viewed as [G, R] and B, C stay [.., G, N], never copied per head.
  const int64_t R = H / G;
  torch::Tensor x = x_in.to(f);                                           // [B, T, H, P]
  torch::Tensor dt = dt_in.to(f);                                         // [B, T, H]
  torch::Tensor Bm = B_in.to(f);                                          // [B, T, G, N]
  torch::Tensor Cm = C_in.to(f);                                          // [B, T, G, N]
  const torch::Tensor A = A_in.to(f);                                     // [H]
  const torch::Tensor D = D_in.to(f);                                     // [H]

  // Pad T to a multiple of Q with dt = 0: a padded token decays nothing (exp(0) = 1) and adds
  // nothing (dt * x * B = 0), so the final state is the state after token T exactly.
  const int64_t pad = (Q - T % Q) % Q, nc = (T + pad) / Q;
  if (pad > 0) {
    x = F::pad(x, F::PadFuncOptions({0, 0, 0, 0, 0, pad}));
    if (bug == ScanBug::kPaddedDtLeaks) {
      // MUTANT(padded-tail-leaks): the padding repeats the last real token's dt instead of 0, so
      // each padded token decays the state by exp(dt * A) (it adds nothing: x is padded with 0).
      dt = torch::cat({dt, dt.narrow(1, T - 1, 1).expand({Bsz, pad, H})}, 1);
    } else {
      dt = F::pad(dt, F::PadFuncOptions({0, 0, 0, pad}));
    }
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

  const torch::Tensor seg = aten_ops::segment_sums(dA);  // [B, H, nc, Q(i), Q(j)], the engine's

  // 1. Intra-chunk (diagonal blocks): y_i += sum_{j<=i} (C_i.B_j) exp(seg[i, j]) dt_j x_j. C·B is
  // computed once per group.
  const torch::Tensor CB = torch::einsum("bcign,bcjgn->bgcij", {Cm, Bm});  // [B, G, nc, Q, Q]
  torch::Tensor decay_ij = seg.exp();  // [B, H, nc, Q(i), Q(j)]
  if (bug == ScanBug::kExpBeforeMask) {
    // MUTANT(segsum-exp-before-mask): the segment sums as mamba_ssm forms them (differences of
    // cumulative sums), exp first, mask after, no clamp. Above the diagonal Acs_i - Acs_j =
    // sum |dt*A| over (i, j]: past ~88.7 exp is inf in fp32 and inf * 0 = NaN.
    const auto causal = torch::ones({Q, Q}, torch::TensorOptions().dtype(torch::kBool).device(Acs.device())).tril();
    decay_ij = (Acs.unsqueeze(-1) - Acs.unsqueeze(-2)).exp() * causal.to(f);
  }
  const torch::Tensor L = CB.unsqueeze(2) * decay_ij.reshape({Bsz, G, R, nc, Q, Q});  // [B, G, R, nc, Q, Q]
  const torch::Tensor y_diag = torch::einsum("bgrcij,bcjgrp->bcigrp", {L, xdt});    // [B, nc, Q, G, R, P]

  // 2. Each chunk's contribution to the state at its end, starting from zero: token j decays by
  // seg[Q-1, j] to the chunk's end.
  const torch::Tensor decay_to_end = seg.select(3, Q - 1).exp().reshape({Bsz, G, R, nc, Q});  // [B, G, R, nc, Q]
  const torch::Tensor chunk_states =
      torch::einsum("bcjgn,bgrcj,bcjgrp->bcgrpn", {Bm, decay_to_end, xdt}).reshape({Bsz, nc, H, P, N});

  // 3. Inter-chunk recurrence: the state entering chunk c, and the final state.
  torch::Tensor s = initial_state.defined() ? initial_state.to(f) : torch::zeros({Bsz, H, P, N}, x.options());
  torch::Tensor S;  // [B, nc, H, P, N]
  if (bug == ScanBug::kInterChunkAxis) {
    // HF's matrix form: states = [s_0, chunk_states...] ([B, nc+1, H, P, N]); decay_chunk[z, c] =
    // exp(sum of the chunk totals of chunks c .. z-1) for z >= c, else 0  ([B, H, nc+1, nc+1]).
    const torch::Tensor totals = F::pad(Acs.select(3, Q - 1), F::PadFuncOptions({1, 0}));  // [B, H, nc+1]
    const torch::Tensor cum = totals.cumsum(-1);
    const auto lower =
        torch::ones({nc + 1, nc + 1}, torch::TensorOptions().dtype(torch::kBool).device(cum.device())).tril();
    const torch::Tensor decay_chunk = (cum.unsqueeze(-1) - cum.unsqueeze(-2))
                                          .masked_fill(lower.logical_not(), -std::numeric_limits<double>::infinity())
                                          .exp();  // [B, H, z, c]
    const torch::Tensor states = torch::cat({s.unsqueeze(1), chunk_states}, 1).permute({0, 2, 1, 3, 4});  // [B, H, c, P, N]
    // MUTANT(inter-chunk-axis): .sum over dim 2 (the target chunk z) instead of dim 3 (the source
    // chunk c): new[c] = state[c] * sum_z decay_chunk[z, c] -- HF #34817 before #35154.
    const torch::Tensor product = decay_chunk.unsqueeze(-1).unsqueeze(-1) * states.unsqueeze(2);  // [B, H, z, c, P, N]
    const torch::Tensor new_states = product.sum(2).permute({0, 2, 1, 3, 4});  // [B, nc+1, H, P, N]
    S = new_states.narrow(1, 0, nc);
    s = new_states.select(1, nc);
  } else {
    const torch::Tensor chunk_decay = Acs.select(3, Q - 1).exp();  // [B, H, nc]
    std::vector<torch::Tensor> entering;
    entering.reserve(static_cast<size_t>(nc));
    for (int64_t c = 0; c < nc; ++c) {
      entering.push_back(s);
      s = s * chunk_decay.select(2, c).unsqueeze(-1).unsqueeze(-1) + chunk_states.select(1, c);
    }
    S = torch::stack(entering, 1);
  }

  // 4. Off-diagonal blocks: y_i += exp(Acs_i) C_i . S_c.
  const torch::Tensor y_off =
      torch::einsum("bcign,bcgrpn,bgrci->bcigrp",
                    {Cm, S.reshape({Bsz, nc, G, R, P, N}), Acs.exp().reshape({Bsz, G, R, nc, Q})});  // [B, nc, Q, G, R, P]

  torch::Tensor y = (y_diag + y_off + x * D.view({1, 1, 1, G, R, 1})).reshape({Bsz, nc * Q, H, P});
  return {y.narrow(1, 0, T), s};
}

}  // namespace mambadiff::mutants
