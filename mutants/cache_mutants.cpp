#include "mutants/cache_mutants.h"

namespace mambadiff::mutants {

Mamba2Cache::Snapshot AliasingSnapshot::snapshot(const Mamba2Cache& cache) const {
  Mamba2Cache::Snapshot s;
  s.seqlen_offset = cache.seqlen_offset;
  s.conv_states = cache.conv_states;  // MUTANT(snapshot-aliases-storage): handles, not clones
  s.ssm_states = cache.ssm_states;    // MUTANT(snapshot-aliases-storage)
  return s;
}

void InjectMisalignsConvWindow::inject(Mamba2Cache& cache, int64_t layer, const torch::Tensor& delta) const {
  cache.inject(layer, delta);  // validates layer and shape
  torch::NoGradGuard no_grad;
  torch::Tensor& window = cache.conv_states[static_cast<size_t>(layer)];  // [B, C, K]
  const int64_t K = window.size(2);
  // MUTANT(conv-window-misaligned): the window moves one token on without a token.
  window.narrow(2, 0, K - 1).copy_(window.narrow(2, 1, K - 1).clone());
  window.narrow(2, K - 1, 1).zero_();
}

}  // namespace mambadiff::mutants
