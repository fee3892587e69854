#include "harness/scenario_runner.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <nlohmann/json.hpp>

#include "engine/errors.h"
#include "engine/memory_estimate.h"
#include "engine/safetensors.h"

namespace mambadiff {

void require_memory_for_scenario(const Scenario& scenario, const Mamba2Config& config, torch::ScalarType dtype) {
  std::vector<int64_t> forward_tokens;
  size_t longest_op = 0;
  int64_t longest = -1;
  for (size_t i = 0; i < scenario.ops.size(); ++i) {
    const ScenarioOp& op = scenario.ops[i];
    if (op.kind != OpKind::kForward) continue;
    forward_tokens.push_back(op.tokens.size(1));
    if (op.tokens.size(1) > longest) {
      longest = op.tokens.size(1);
      longest_op = i;
    }
  }
  const MemoryEstimate need =
      estimate_run_memory(config, dtype, scenario.batch_size(), forward_tokens, /*keep_outputs=*/true);
  require_memory(need, longest < 0 ? scenario.file.string()
                                   : fmt::format("{}: op {} (forward of {} tokens, the longest)", scenario.file.string(),
                                                 longest_op, longest));
}

ScenarioResult run_scenario(const Scenario& scenario, ExecutionPath& path, const CacheOps& cache_ops) {
  require_memory_for_scenario(scenario, path.config(), path.dtype());
  ScenarioResult result;
  result.path = path.name();
  result.dtype = dtype_string(path.dtype());
  Mamba2Cache cache = path.new_cache(scenario.batch_size());
  std::map<std::string, Mamba2Cache::Snapshot> snapshots;
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < scenario.ops.size(); ++i) {
    const ScenarioOp& op = scenario.ops[i];
    OpResult r;
    r.op_index = i;
    r.kind = op.kind;
    try {
      switch (op.kind) {
        case OpKind::kForward: {
          ForwardOutput out = path.forward(op.tokens, cache);
          r.logits = out.logits;
          r.layer_outputs = std::move(out.layer_outputs);
          r.trace = std::move(out.trace);
          break;
        }
        case OpKind::kInject: cache_ops.inject(cache, op.layer, op.delta); break;
        case OpKind::kSnapshot: snapshots[op.name] = cache_ops.snapshot(cache); break;
        case OpKind::kRestore: {
          auto it = snapshots.find(op.name);
          if (it == snapshots.end()) throw InputError(fmt::format("restore: unknown snapshot '{}'", op.name));
          cache_ops.restore(cache, it->second);
          break;
        }
        case OpKind::kReset: cache.reset(); break;
      }
    } catch (const InputError& e) {
      throw InputError(fmt::format("{}: op {} ({}): {}", scenario.file.string(), i, op_kind_name(op.kind), e.what()));
    }
    r.cache = CacheState::of(cache);
    result.ops.push_back(std::move(r));
  }
  result.final_cache = CacheState::of(cache);
  return result;
}

ScenarioResult read_result_file(const std::filesystem::path& file, const Scenario& scenario, int64_t vocab_size) {
  const auto f = safetensors::File::open(file);
  ScenarioResult result;
  result.path = "file:" + file.string();
  result.dtype = "float32";
  result.metadata = f.metadata();
  for (size_t i = 0; i < scenario.ops.size(); ++i) {
    const ScenarioOp& op = scenario.ops[i];
    OpResult r;
    r.op_index = i;
    r.kind = op.kind;
    if (op.kind == OpKind::kForward) {
      const std::string name = fmt::format("op.{}.logits", i);
      if (!f.contains(name)) throw InputError(fmt::format("{}: missing tensor '{}'", file.string(), name));
      r.logits = f.tensor(name);
      const std::vector<int64_t> want = {op.tokens.size(0), op.tokens.size(1), vocab_size};
      if (r.logits.sizes().vec() != want || !r.logits.is_floating_point()) {
        throw InputError(fmt::format("{}: tensor '{}': shape [{}] expected float [{}]", file.string(), name,
                                     fmt::join(r.logits.sizes().vec(), ", "), fmt::join(want, ", ")));
      }
    }
    result.ops.push_back(std::move(r));
  }
  for (int64_t l = 0;; ++l) {
    const auto ssm = fmt::format("cache.ssm_states.{}", l), conv = fmt::format("cache.conv_states.{}", l);
    if (!f.contains(ssm) || !f.contains(conv)) break;
    result.final_cache.ssm_states.push_back(f.tensor(ssm));
    result.final_cache.conv_states.push_back(f.tensor(conv));
  }
  if (f.contains("cache.seqlen_offset")) {
    result.final_cache.seqlen_offset = f.tensor("cache.seqlen_offset").view({-1})[0].item<int64_t>();
  }
  return result;
}

std::string trace_json(const ScenarioResult& result) {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& op : result.ops)
    for (const auto& rec : op.trace)
      j.push_back({{"op", op.op_index}, {"layer", rec.layer}, {"branch", branch_name(rec.branch)}, {"kernels", rec.kernels}});
  return j.dump();
}

void write_result_file(const std::filesystem::path& file, const ScenarioResult& result,
                       const std::map<std::string, std::string>& extra) {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& op : result.ops) {
    if (op.kind == OpKind::kForward) {
      tensors.emplace_back(fmt::format("op.{}.logits", op.op_index), op.logits.to(torch::kFloat32));
    }
  }
  const CacheState& c = result.final_cache;
  for (size_t l = 0; l < c.ssm_states.size(); ++l) {
    tensors.emplace_back(fmt::format("cache.ssm_states.{}", l), c.ssm_states[l].to(torch::kFloat32));
    tensors.emplace_back(fmt::format("cache.conv_states.{}", l), c.conv_states[l].to(torch::kFloat32));
  }
  tensors.emplace_back("cache.seqlen_offset", torch::tensor({c.seqlen_offset}, torch::kInt64));
  std::map<std::string, std::string> meta = extra;
  meta["path"] = result.path;
  meta["dtype"] = result.dtype;
  meta["dispatch_trace"] = trace_json(result);
  safetensors::write(file, tensors, meta);
}

}  // namespace mambadiff
