// A copy of engine/ssd_chunk_scan.cpp with one real bug switched in. Three mutants need a modified
// scan; each bug is confined to the part of the scan it lives in and marked "MUTANT(<name>)".
// With ScanBug::kNone it computes what aten_ops::ssd_chunk_scan computes (mutants_test checks).
#pragma once

#include <torch/torch.h>

#include <utility>

namespace mambadiff::mutants {

enum class ScanBug {
  kNone,
  // HF #34817 (fixed by #35154): the inter-chunk recurrence in HF's matrix form,
  // new_state[z] = sum_c decay_chunk[z, c] * state[c], summed over the target chunk z instead
  // of the source chunk c, so states are no longer passed between chunks.
  kInterChunkAxis,
  // mamba_ssm PR #713: exp of the segment sums before the causal mask (and with no clamp to <= 0):
  // above the diagonal the sums are positive, exp overflows past ~88.7 in fp32 and inf * 0 = NaN.
  kExpBeforeMask,
  // The padded tail of the last chunk takes part in the scan: dt is padded with the last real
  // token's dt instead of 0, so the padding decays the final state (padding that is not masked:
  // HF PR #46773, #41790).
  kPaddedDtLeaks,
};

// Shapes as aten_ops::ssd_chunk_scan:
//   x: [B, T, H, P]  dt: [B, T, H]  A: [H]  Bm, Cm: [B, T, G, N]  D: [H]
//   initial_state: [B, H, P, N] or undefined.  Returns (y: [B, T, H, P], final_state: [B, H, P, N]).
std::pair<torch::Tensor, torch::Tensor> buggy_ssd_chunk_scan(const torch::Tensor& x, const torch::Tensor& dt,
                                                             const torch::Tensor& A, const torch::Tensor& Bm,
                                                             const torch::Tensor& Cm, const torch::Tensor& D,
                                                             const torch::Tensor& initial_state, int64_t chunk_size,
                                                             ScanBug bug);

}  // namespace mambadiff::mutants
