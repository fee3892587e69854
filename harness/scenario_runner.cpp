#include "harness/scenario_runner.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <nlohmann/json.hpp>

#include "engine/errors.h"
#include "engine/input_file.h"
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

namespace {

// The metadata key `dispatch_trace` of a result file ([{"op", "layer", "branch", "kernels"}], as
// trace_json writes it) into the forward ops' traces. Other systems' exporters write it with the
// logical kernel names (engine/mamba2_cache.h logical_kernels) so that a different dispatch is
// found like any path's, at its op and layer.
void read_trace(const std::filesystem::path& file, const std::string& text, ScenarioResult& result) {
  const std::string where = file.string() + ": metadata 'dispatch_trace'";
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception&) {
    throw InputError(where + ": not JSON");
  }
  if (!j.is_array()) throw InputError(where + ": expected an array of {\"op\", \"layer\", \"branch\", \"kernels\"}");
  for (const auto& e : j) {
    if (!e.is_object() || !e.contains("op") || !e["op"].is_number_unsigned() || !e.contains("layer") ||
        !e["layer"].is_number_integer() || !e.contains("branch") || !e["branch"].is_string() ||
        !e.contains("kernels") || !e["kernels"].is_string()) {
      throw InputError(where + ": an entry lacks 'op', 'layer' (integers), 'branch' or 'kernels' (strings)");
    }
    const auto op = e["op"].get<size_t>();
    if (op >= result.ops.size() || result.ops[op].kind != OpKind::kForward) {
      throw InputError(fmt::format("{}: entry for op {}, which is not a forward op of the scenario", where, op));
    }
    DispatchRecord rec;
    rec.layer = e["layer"].get<int64_t>();
    const auto branch = e["branch"].get<std::string>();
    if (branch == branch_name(Branch::kPrefill)) {
      rec.branch = Branch::kPrefill;
    } else if (branch == branch_name(Branch::kStep)) {
      rec.branch = Branch::kStep;
    } else if (branch == branch_name(Branch::kContinue)) {
      rec.branch = Branch::kContinue;
    } else {
      throw InputError(fmt::format("{}: op {}: branch '{}' is not prefill, step or continue", where, op,
                                   truncate_for_message(branch)));
    }
    rec.kernels = e["kernels"].get<std::string>();
    result.ops[op].trace.push_back(rec);
  }
}

}  // namespace

ScenarioResult read_result_file(const std::filesystem::path& file, const Scenario& scenario, int64_t vocab_size) {
  const auto f = safetensors::File::open(file);
  ScenarioResult result;
  result.path = "file:" + file.string();
  result.metadata = f.metadata();
  // The dtype the exporter computed in, when it says so and it is a low precision: a bf16 or fp16
  // export is bounded by the tolerance of that dtype. Anything else (float32, a float64 `run` of the
  // reference, no key: HF's exports) is compared as float32, as before the key was read.
  result.dtype = "float32";
  if (const auto it = result.metadata.find("dtype");
      it != result.metadata.end() && (it->second == "bfloat16" || it->second == "float16")) {
    result.dtype = it->second;
  }
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
      // Optional: the residual stream after each layer, `op.<i>.layer.<l>` [B, T, D] (other systems'
      // exporters write them so that a divergence is located to its layer).
      for (int64_t l = 0;; ++l) {
        const std::string layer = fmt::format("op.{}.layer.{}", i, l);
        if (!f.contains(layer)) break;
        torch::Tensor t = f.tensor(layer);
        if (t.dim() != 3 || t.size(0) != want[0] || t.size(1) != want[1] || !t.is_floating_point()) {
          throw InputError(fmt::format("{}: tensor '{}': shape [{}] expected float [{}, {}, hidden_size]", file.string(),
                                       layer, fmt::join(t.sizes().vec(), ", "), want[0], want[1]));
        }
        r.layer_outputs.push_back(t);
      }
    }
    result.ops.push_back(std::move(r));
  }
  if (const auto it = result.metadata.find("dispatch_trace"); it != result.metadata.end()) {
    read_trace(file, it->second, result);
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
