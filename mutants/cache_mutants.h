// Mutant caches: the ops run_scenario applies to the cache (harness/scenario_runner.h CacheOps),
// broken the way a stand-in cache broke them. The broken line is marked MUTANT(<name>).
#pragma once

#include "harness/scenario_runner.h"

namespace mambadiff::mutants {

// snapshot() keeps references to the live state tensors instead of copies: every later in-place
// update (forward, inject) changes the snapshot too, and restore() copies the cache onto itself.
class AliasingSnapshot : public CacheOps {
 public:
  Mamba2Cache::Snapshot snapshot(const Mamba2Cache& cache) const override;
};

// inject() adds delta to the SSM state and also moves that layer's conv window one token on
// (columns shift left, the newest is zero): the conv window is no longer aligned with the state.
class InjectMisalignsConvWindow : public CacheOps {
 public:
  void inject(Mamba2Cache& cache, int64_t layer, const torch::Tensor& delta) const override;
};

}  // namespace mambadiff::mutants
