// One iteration of the real-cache optimizer as a fixed program over tensors that never move:
// restore the cache to the post-prefill base, write base + Δ into its ssm_states, run the path's
// own forward on that cache (step the last prompt token, teacher-force the targets), loss,
// statistics of this Δ, gradient, update (Adam or signed PGD), projection onto the budget.
//
// Nothing in an iteration reads device data on the host: the step counter, the statistics and
// the Adam moments are device tensors. So the same iteration runs eagerly (CPU, first GPU steps)
// or is captured once into a CUDA graph and replayed (optimizer/cuda_graph.h): the same kernels
// on the same storage, the cache's fixed storage is what makes that legal (SPEC §3).
#pragma once

#include <map>
#include <vector>

#include "engine/execution_path.h"
#include "optimizer/real_cache_optimizer.h"

namespace mambadiff {

class DeltaLoop {
 public:
  // `cache` holds the prompt but its last token; `base` is its snapshot. Δ starts at zero.
  DeltaLoop(ExecutionPath& path, Mamba2Cache& cache, const Mamba2Cache::Snapshot& base, const OptimizeOptions& options);

  // The loop's sequence at the current Δ: one [V] logits row per target token. Carries autograd
  // history to Δ when grad mode is on.
  std::vector<torch::Tensor> logits();

  // One iteration (see the file comment). The statistics describe Δ before the update.
  void iterate();

  // The statistics of the last iterate(): one device-to-host copy.
  StepReport report(int64_t step) const;

  // Back to the Δ before the last iterate()'s update (the goal was reached with that Δ).
  void undo_last_update();

  const std::map<int64_t, torch::Tensor>& delta() const { return delta_; }

 private:
  ExecutionPath& path_;
  Mamba2Cache& cache_;
  const Mamba2Cache::Snapshot& base_;
  OptimizeOptions options_;
  std::vector<torch::Tensor> tokens_;  // per loop forward: [1, 1] int64 on the path's device
  std::map<int64_t, torch::Tensor> delta_;     // layer -> [1, H, P, N] fp32, requires grad
  std::map<int64_t, torch::Tensor> previous_;  // Δ before the last update
  std::map<int64_t, torch::Tensor> adam_m_, adam_v_;
  torch::Tensor adam_steps_;  // [] float32: updates taken; a tensor, so a replayed graph counts
  torch::Tensor stats_;       // [4] float64: loss, worst rank, worst margin, ||Δ||_2
};

// The loss of the loop's logits: "ce" = Σ_k -log softmax(logits_k)[target_k]; "margin" =
// Σ_k relu(runner-up_k - logit_k[target_k] + margin). Device ops only.
torch::Tensor delta_loss(const std::vector<torch::Tensor>& logits, const std::vector<int64_t>& target,
                         const std::string& loss, double margin);

// The statistics of one Δ, [4] float64 on the rows' device: {loss, worst rank, worst margin, ‖Δ‖₂}.
// rows: [V] logits per target token; rank = 1 + the logits strictly above the target's, a row with a
// non-finite logit ranks V + 1; margin = target logit − the best other (NaN-propagating); the worst
// over the rows. ATen ops (device work only); on a CUDA device DeltaLoop runs the same as one
// kernel (fused::delta_statistics).
torch::Tensor delta_statistics(const std::vector<torch::Tensor>& rows, const std::vector<int64_t>& target,
                               const std::vector<torch::Tensor>& deltas, const torch::Tensor& loss);

// One Adam update of every tensor in `params` (torch.optim.Adam's defaults: betas 0.9, 0.999,
// eps 1e-8, no weight decay) with the step number on the device: `step` is a [] float32 tensor
// holding t = 1, 2, ... for this update. m and v are the moments, updated in place.
void adam_update(std::vector<torch::Tensor> params, const std::vector<torch::Tensor>& grads,
                 std::vector<torch::Tensor> m, std::vector<torch::Tensor> v, const torch::Tensor& step, double lr);

}  // namespace mambadiff
