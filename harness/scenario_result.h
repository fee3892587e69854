// The result of a scenario on one path, which every comparison works on (harness/compare.h): per
// op the logits, per-layer outputs, the cache after the op and the dispatch trace. It comes from
// running an ExecutionPath (harness/scenario_runner.h run_scenario) or from a `file:` path (tensors
// another system exported, read_result_file).
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "engine/mamba2_cache.h"
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

}  // namespace mambadiff
