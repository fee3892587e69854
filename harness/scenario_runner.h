// Playing a scenario on one path, and the result every comparison works on. A result comes from
// running an ExecutionPath (with per-layer outputs, the cache after every op and the dispatch
// trace) or from a `file:` path (tensors another system exported, in `run`'s naming).
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/execution_path.h"
#include "harness/scenario.h"

namespace mambadiff {

struct CacheState {
  std::vector<torch::Tensor> conv_states;  // per layer [B, conv_dim, K]
  std::vector<torch::Tensor> ssm_states;   // per layer [B, H, P, N]
  int64_t seqlen_offset = 0;
  bool defined() const { return !ssm_states.empty(); }
  static CacheState of(const Mamba2Cache& cache);  // detached copies
};

struct OpResult {
  size_t op_index = 0;
  OpKind kind = OpKind::kForward;
  torch::Tensor logits;                      // forward: [B, T, V]
  std::vector<torch::Tensor> layer_outputs;  // forward: per layer [B, T, D]; empty from files
  std::vector<DispatchRecord> trace;         // forward: per layer; empty from files
  CacheState cache;                          // after the op; undefined from files
};

struct ScenarioResult {
  std::string path;            // the path's name
  std::string dtype;           // the dtype the path computed in
  std::vector<OpResult> ops;   // one per scenario op
  CacheState final_cache;
  std::map<std::string, std::string> metadata;  // from files
};

// How run_scenario applies the cache ops of a scenario. The default is Mamba2Cache's own (exact)
// inject, snapshot and restore; the test mutants (tests/mutants/) substitute a broken cache here
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
