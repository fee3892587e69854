// Playing a scenario on one path (run_scenario), and reading and writing a result's tensors in
// `run`'s naming (a `file:` path). The result itself is harness/scenario_result.h.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/execution_path.h"
#include "harness/scenario.h"
#include "harness/scenario_result.h"

namespace mambadiff {

// How run_scenario applies the cache ops of a scenario. The default is Mamba2Cache's own (exact)
// inject, snapshot and restore; the test mutants (mutants/) substitute a broken cache here
// (a snapshot that aliases the live storage, an injection that misaligns the conv window).
class CacheOps {
 public:
  virtual ~CacheOps() = default;
  // delta: [B, H, P, N] or [H, P, N]
  virtual void inject(Mamba2Cache& cache, int64_t layer, const torch::Tensor& delta) const {
    cache.inject(layer, delta);
  }
  virtual Mamba2Cache::Snapshot snapshot(const Mamba2Cache& cache) const { return cache.snapshot(); }
  virtual void restore(Mamba2Cache& cache, const Mamba2Cache::Snapshot& snap) const { cache.restore(snap); }
};

// InputError naming the scenario file and its longest forward op when running it at `dtype` on a
// model of `config` needs more memory than the limit (engine/memory_estimate.h). Called before
// anything is allocated: by evaluate_path before it builds the path, and by run_scenario.
void require_memory_for_scenario(const Scenario& scenario, const Mamba2Config& config, torch::ScalarType dtype);

// Plays every op on a fresh cache of `path`. InputError on a bad op (token id, inject shape,
// layer), naming the op index.
ScenarioResult run_scenario(const Scenario& scenario, ExecutionPath& path, const CacheOps& cache_ops = CacheOps());

// Reads tensors exported for `scenario` (`op.<i>.logits`, `cache.*`), checking each forward op's
// logits are there with the shape [B, T, V] the scenario implies.
ScenarioResult read_result_file(const std::filesystem::path& file, const Scenario& scenario, int64_t vocab_size);

// Writes `run`'s output (SPEC §5): op.<i>.logits [B,T,V] fp32, cache.ssm_states.<l>,
// cache.conv_states.<l> (fp32), cache.seqlen_offset (int64 [1]); the dispatch trace and `extra`
// in the metadata. Atomic.
void write_result_file(const std::filesystem::path& file, const ScenarioResult& result,
                       const std::map<std::string, std::string>& extra = {});

// The dispatch trace of a result as JSON: [{"op", "layer", "branch", "kernels"}].
std::string trace_json(const ScenarioResult& result);

}  // namespace mambadiff
