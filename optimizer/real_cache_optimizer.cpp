#include "optimizer/real_cache_optimizer.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <torch/cuda.h>
#include <nlohmann/json.hpp>

#include "engine/errors.h"
#include "engine/memory_estimate.h"
#include "engine/input_file.h"
#include "engine/safetensors.h"
#include "engine/tensor_bytes.h"
#include "harness/path_registry.h"
#include "optimizer/cuda_graph.h"
#include "optimizer/decode_graph.h"
#include "optimizer/delta_loop.h"

namespace mambadiff {

namespace {

torch::Tensor one_token(int64_t id) { return torch::tensor({id}, torch::kInt64).view({1, 1}); }

torch::Tensor tokens_tensor(const std::vector<int64_t>& ids) {
  return torch::tensor(ids, torch::kInt64).view({1, static_cast<int64_t>(ids.size())});
}

// rank 1 = argmax; ties count against the target. Logits holding NaN or an infinity rank no
// token: V + 1, worse than any real rank (NaN compares false with everything, which would make
// the target "rank 1").
int64_t rank_of(const torch::Tensor& logits, int64_t target) {
  const torch::Tensor l = logits.detach().to(torch::kCPU, torch::kFloat64);
  if (!torch::isfinite(l).all().item<bool>()) return l.numel() + 1;
  return 1 + (l > l[target]).sum().item<int64_t>() ;
}

double margin_of(const torch::Tensor& logits, int64_t target) {
  torch::Tensor l = logits.detach().to(torch::kCPU, torch::kFloat64).clone();
  const double t = l[target].item<double>();
  l[target] = -std::numeric_limits<double>::infinity();
  return t - l.max().item<double>();
}

RankReport rank_report(const std::vector<torch::Tensor>& logits, const std::vector<int64_t>& target) {
  RankReport r;
  r.margin = std::numeric_limits<double>::infinity();
  for (size_t k = 0; k < target.size(); ++k) {
    r.rank = std::max(r.rank, rank_of(logits[k], target[k]));
    r.margin = std::min(r.margin, margin_of(logits[k], target[k]));
  }
  r.probability = torch::softmax(logits[0].detach().to(torch::kFloat64), 0)[target[0]].item<double>();
  return r;
}

void check_options(const Mamba2Config& c, const OptimizeOptions& o) {
  if (o.prompt.size() < 2) throw InputError("optimize: --prompt-tokens needs at least 2 tokens (prefill all but the last, then step it)");
  if (o.target.empty()) throw InputError("optimize: --target needs at least one token");
  if (o.layers.empty()) throw InputError("optimize: --layers needs at least one layer");
  for (int64_t t : o.prompt)
    if (t < 0 || t >= c.vocab_size) throw InputError(fmt::format("optimize: prompt token {} outside [0, vocab_size={})", t, c.vocab_size));
  for (int64_t t : o.target)
    if (t < 0 || t >= c.vocab_size) throw InputError(fmt::format("optimize: target token {} outside [0, vocab_size={})", t, c.vocab_size));
  for (int64_t l : o.layers)
    if (l < 0 || l >= c.num_hidden_layers) throw InputError(fmt::format("optimize: layer {} out of range [0, {})", l, c.num_hidden_layers));
  if (o.loss != "ce" && o.loss != "margin") throw InputError(fmt::format("optimize: --loss '{}' is not ce or margin", o.loss));
  if (o.optimizer != "adam" && o.optimizer != "pgd") throw InputError(fmt::format("optimize: --optimizer '{}' is not adam or pgd", o.optimizer));
  if (o.steps < 0) throw InputError(fmt::format("optimize: --steps {} is negative", o.steps));
  // An infinite step sends Δ to NaN at once (issue 14: `--lr inf` was reported as rank 1).
  if (!std::isfinite(o.lr) || !(o.lr > 0)) throw InputError(fmt::format("optimize: --lr {} is not a finite number > 0", o.lr));
  if (!std::isfinite(o.margin)) throw InputError(fmt::format("optimize: --margin {} is not finite", o.margin));
  for (const auto& [option, budget] : {std::pair<const char*, double>{"--budget-l2", o.budget_l2}, {"--budget-linf", o.budget_linf}}) {
    if (!std::isfinite(budget) || budget < 0) {
      throw InputError(fmt::format("optimize: {} {} is not a finite number >= 0", option, budget));
    }
  }
  if (const PathRole role = path_role(o.path); role != PathRole::kDifferentiable) {
    throw InputError(fmt::format("optimize: --path {} is not differentiable (its role: {}); use one of {}", o.path,
                                 role_name(role), fmt::join(registered_paths(PathRole::kDifferentiable), ", ")));
  }
}

// The memory of a batch-1 run that prefills the prompt but its last token, then steps `steps`
// single tokens (nothing kept per step), checked before anything is allocated.
void require_memory_for_decode(const Mamba2Config& c, torch::ScalarType dtype, size_t prompt_tokens, int64_t steps,
                               const char* command) {
  MemoryEstimate need = estimate_run_memory(c, dtype, 1, {static_cast<int64_t>(prompt_tokens) - 1, 1},
                                            /*keep_outputs=*/false);
  need.add(fmt::format("the {} generated token ids", steps), {steps}, sizeof(int64_t));
  require_memory(need, fmt::format("{} (a prompt of {} tokens, {} steps)", command, prompt_tokens, steps));
}

}  // namespace

CacheStorage storage_of(const Mamba2Cache& cache) {
  CacheStorage s;
  for (const auto& t : cache.conv_states) s.conv_states.push_back(t.data_ptr());
  for (const auto& t : cache.ssm_states) s.ssm_states.push_back(t.data_ptr());
  return s;
}

bool restored_bit_identically(const Mamba2Cache& cache, const Mamba2Cache::Snapshot& snap, const CacheStorage& storage) {
  const auto same = [](const std::vector<torch::Tensor>& now, const std::vector<torch::Tensor>& saved,
                       const std::vector<const void*>& where) {
    if (now.size() != saved.size() || now.size() != where.size()) return false;
    for (size_t l = 0; l < now.size(); ++l) {
      if (!bytes_equal(now[l], saved[l]) || now[l].data_ptr() != where[l] || now[l].requires_grad()) return false;
    }
    return true;
  };
  return cache.seqlen_offset == snap.seqlen_offset && same(cache.conv_states, snap.conv_states, storage.conv_states) &&
         same(cache.ssm_states, snap.ssm_states, storage.ssm_states);
}

RankReport deploy_delta(const Mamba2Checkpoint& ck, const std::string& path_name, const std::vector<int64_t>& prompt,
                        const std::vector<int64_t>& target, const std::map<int64_t, torch::Tensor>& delta,
                        int64_t generate_tokens, std::vector<int64_t>* generated, const std::atomic<bool>* interrupt) {
  auto path = make_path(path_name, ck, torch::kFloat32);
  return deploy_on(*path, prompt, target, delta, generate_tokens, generated, interrupt);
}

RankReport deploy_on(ExecutionPath& deploy, const std::vector<int64_t>& prompt, const std::vector<int64_t>& target,
                     const std::map<int64_t, torch::Tensor>& delta, int64_t generate_tokens,
                     std::vector<int64_t>* generated, const std::atomic<bool>* interrupt) {
  require_memory_for_decode(deploy.config(), deploy.dtype(), prompt.size(), std::max<int64_t>(generate_tokens, 0),
                            "generate");
  torch::NoGradGuard no_grad;
  ExecutionPath* path = &deploy;
  Mamba2Cache cache = path->new_cache(1);
  path->forward(tokens_tensor({prompt.begin(), prompt.end() - 1}), cache);
  for (const auto& [layer, d] : delta) cache.inject(layer, d);
  const auto after_delta = cache.snapshot();
  // On a GPU every decode step is one replay of the whole model captured on this cache's storage
  // (optimizer/decode_graph.h); elsewhere the eager forward. The graph's forward skips the id
  // check (it reads no tensor on the host), so the ids it will see are checked here.
  std::unique_ptr<DecodeGraph> graph;
  if (DecodeGraph::supported(*path) && cache.seqlen_offset > 0) {
    std::vector<int64_t> ids = target;
    ids.push_back(prompt.back());
    for (const int64_t id : ids) {
      if (id < 0 || id >= path->config().vocab_size) {
        throw InputError(fmt::format("token id {} outside [0, vocab_size={})", id, path->config().vocab_size));
      }
    }
    graph = std::make_unique<DecodeGraph>(*path, cache);
  }
  const auto decode_step = [&](int64_t token) -> torch::Tensor {  // [V]
    if (graph) return graph->step(torch::tensor({token}, torch::kInt64))[0].clone();
    return path->forward(one_token(token), cache).logits[0][0];
  };
  std::vector<torch::Tensor> logits;
  int64_t token = prompt.back();
  for (size_t k = 0; k < target.size(); ++k) {
    logits.push_back(decode_step(token));
    token = target[k];
  }
  if (generated && generate_tokens > 0) {
    cache.restore(after_delta);
    generated->clear();
    token = prompt.back();
    for (int64_t i = 0; i < generate_tokens && !(interrupt && interrupt->load()); ++i) {
      token = decode_step(token).argmax().item<int64_t>();
      generated->push_back(token);
    }
  }
  return rank_report(logits, target);
}

OptimizeResult optimize_delta(const Mamba2Checkpoint& ck, const OptimizeOptions& o,
                              const std::function<void(const StepReport&)>& progress,
                              const std::atomic<bool>* interrupt) {
  check_options(ck.config, o);
  auto loop = make_path(o.path, ck, torch::kFloat32);
  auto deploy = make_path(o.path, ck, torch::kFloat32);
  return optimize_with_paths(ck, *loop, *deploy, o, progress, interrupt);
}

OptimizeResult optimize_with_paths(const Mamba2Checkpoint& ck, ExecutionPath& loop_path, ExecutionPath& deploy_path,
                                   const OptimizeOptions& o, const std::function<void(const StepReport&)>& progress,
                                   const std::atomic<bool>* interrupt) {
  check_options(ck.config, o);
  require_memory_for_decode(ck.config, loop_path.dtype(), o.prompt.size(), static_cast<int64_t>(o.target.size()),
                            "optimize");
  // The real cache, prefilled with the prompt but its last token.
  Mamba2Cache cache = loop_path.new_cache(1);
  {
    torch::NoGradGuard no_grad;
    loop_path.forward(tokens_tensor({o.prompt.begin(), o.prompt.end() - 1}), cache);
  }
  return optimize_on_cache(ck, loop_path, cache, deploy_path, o, progress, interrupt);
}

OptimizeResult optimize_on_cache(const Mamba2Checkpoint& ck, ExecutionPath& loop_path, Mamba2Cache& cache,
                                 ExecutionPath& deploy_path, const OptimizeOptions& o,
                                 const std::function<void(const StepReport&)>& progress,
                                 const std::atomic<bool>* interrupt) {
  check_options(ck.config, o);
  OptimizeResult result;
  ExecutionPath* path = &loop_path;
  const std::vector<int64_t> prefix(o.prompt.begin(), o.prompt.end() - 1);
  if (cache.seqlen_offset != static_cast<int64_t>(prefix.size()) || cache.batch_size() != 1) {
    throw InputError(fmt::format("optimize: the cache must hold the prompt but its last token ({} tokens, batch 1); it holds {} (batch {})",
                                 prefix.size(), cache.seqlen_offset, cache.batch_size()));
  }
  // The cache's states at entry are the base, and what it is restored to on every way out.
  const Mamba2Cache::Snapshot base = cache.snapshot();
  // Where every state lives at entry: a restore writes into the same storage, never a new one.
  const CacheStorage storage = storage_of(cache);

  DeltaLoop loop(*path, cache, base, o);
  {
    // Restores on every way out: explicitly below on the normal path (a failure there throws),
    // from its destructor when an exception leaves the scope (a failure there is logged).
    ScopedCacheRestore guard(cache, base);

    // The zero-Δ gate: at Δ = 0 the loop must compute, bitwise on the same path, what deployment
    // computes. The incident had a 173.76 logit gap here and nothing looked.
    {
      torch::NoGradGuard no_grad;
      const auto loop_logits = loop.logits();
      auto fresh = deploy_path.new_cache(1);
      deploy_path.forward(tokens_tensor(prefix), fresh);
      for (const auto& [layer, d] : loop.delta()) fresh.inject(layer, d.detach());
      int64_t token = o.prompt.back();
      double max_diff = 0.0;
      bool equal = true;
      for (size_t k = 0; k < o.target.size(); ++k) {
        const torch::Tensor dep = deploy_path.forward(one_token(token), fresh).logits[0][0];
        equal = equal && bytes_equal(dep, loop_logits[k]);
        max_diff = std::max(max_diff, (dep.to(torch::kFloat64) - loop_logits[k].to(torch::kFloat64)).abs().max().item<double>());
        token = o.target[k];
      }
      // NaN logits are bitwise equal to themselves: a gate that passes on them proves nothing.
      bool finite = true;
      for (const auto& l : loop_logits) finite = finite && torch::isfinite(l).all().item<bool>();
      if (!finite) {
        throw ZeroDeltaGateFailed(fmt::format("zero-delta gate failed: the loop's logits ({}) at delta = 0 hold NaN or an infinity",
                                              loop_path.name()));
      }
      result.zero_delta_gate_passed = equal;
      result.zero_delta_gate_max_diff = max_diff;
      if (!equal) {
        throw ZeroDeltaGateFailed(fmt::format(
            "zero-delta gate failed: the loop's logits ({}) at delta = 0 differ from deployment's ({}) by up to {:.6g}",
            loop_path.name(), deploy_path.name(), max_diff));
      }
    }

    // On a GPU the first iteration runs eagerly, the second is the capture's warm-up and is
    // captured, every later one is a replay of the same kernels on the same storage.
    constexpr int64_t kCaptureAtStep = 1;
    const bool use_graph = o.cuda_graph && CapturedProgram::supported(path->device());
    std::unique_ptr<CapturedProgram> graph;
    std::vector<double> step_seconds;  // per completed step; the median is reported
    int64_t step = 0;
    for (; step < o.steps; ++step) {
      const auto t0 = std::chrono::steady_clock::now();
      if (interrupt && interrupt->load()) {
        result.interrupted = true;
        break;
      }
      if (graph) {
        graph->replay();
      } else if (use_graph && step == kCaptureAtStep) {
        graph = std::make_unique<CapturedProgram>(path->device(), [&loop] { loop.iterate(); }, /*warmup=*/1);
      } else {
        loop.iterate();
      }
      const StepReport rep = loop.report(step);  // waits for the iteration
      step_seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      result.final_loss = rep.loss;
      if (progress) progress(rep);
      if (!std::isfinite(rep.loss) || !std::isfinite(rep.delta_l2)) {  // nothing can come back from NaN
        result.nonfinite_step = step;
        break;
      }
      if (rep.rank == 1 && rep.margin >= o.margin) {  // goal reached with the Δ before this update
        loop.undo_last_update();
        break;
      }
    }
    result.steps = step;
    result.cuda_graph = graph != nullptr;
    result.graph_kernels = graph ? graph->kernel_count() : 0;
    result.step_seconds = step_seconds;
    if (!step_seconds.empty()) {
      // The median over steps: the first steps pay allocator warm-up and the capture.
      std::nth_element(step_seconds.begin(), step_seconds.begin() + step_seconds.size() / 2, step_seconds.end());
      result.seconds_per_step = step_seconds[step_seconds.size() / 2];
    }

    // The simulated rank of the final Δ, in the loop's own sequence.
    torch::NoGradGuard no_grad;
    result.simulated = rank_report(loop.logits(), o.target);
    graph.reset();  // before the cache's tensors it refers to are restored
    guard.restore_now();
  }

  result.restore_bit_identical = restored_bit_identically(cache, base, storage);

  for (const auto& [layer, d] : loop.delta()) {
    result.delta[layer] = d.detach().to(torch::kCPU).clone();
    result.delta_l2_by_layer[layer] = result.delta[layer].norm().item<double>();
  }
  result.deployed = deploy_on(deploy_path, o.prompt, o.target, result.delta, o.generate_tokens, &result.generated_with_delta);
  deploy_on(deploy_path, o.prompt, o.target, {}, o.generate_tokens, &result.generated_without_delta);
  for (const auto& name : registered_paths()) {
    if (name == deploy_path.name() || path_role(name) == PathRole::kBaseline) continue;
    std::string why;
    if (!path_available(name, torch::kFloat32, &why)) {
      result.skipped_paths[name] = why;
      continue;
    }
    result.deployed_rank_by_path[name] = deploy_delta(ck, name, o.prompt, o.target, result.delta).rank;
  }
  result.deployed_rank_by_path[deploy_path.name()] = result.deployed.rank;
  return result;
}

void save_delta(const std::string& file, const OptimizeResult& r, const OptimizeOptions& o, const Mamba2Checkpoint& ck) {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& [layer, d] : r.delta) tensors.emplace_back(fmt::format("delta.{}", layer), d.to(torch::kFloat32));
  const nlohmann::json settings = {{"layers", o.layers}, {"loss", o.loss}, {"margin", o.margin},
                                   {"budget_l2", o.budget_l2}, {"budget_linf", o.budget_linf},
                                   {"optimizer", o.optimizer}, {"lr", o.lr}, {"steps", o.steps},
                                   {"seed", o.seed}, {"path", o.path}};
  const std::map<std::string, std::string> meta = {
      {"format", "mambadiff.delta.v1"},
      {"prompt", nlohmann::json(o.prompt).dump()},
      {"target", nlohmann::json(o.target).dump()},
      {"model", ck.directory.string()},
      {"model_hash", ck.hash},
      {"settings", settings.dump()},
      {"injection_point", "prefill prompt[:-1], ssm_states[layer] += delta.<layer>, step prompt[-1]"},
      {"simulated_rank", std::to_string(r.simulated.rank)},
      {"deployed_rank", std::to_string(r.deployed.rank)}};
  safetensors::write(file, tensors, meta);
}

std::map<int64_t, torch::Tensor> load_delta(const std::string& file, const Mamba2Config& c) {
  const auto f = safetensors::File::open(file);
  std::map<int64_t, torch::Tensor> out;
  for (const auto& name : f.names()) {
    if (name.rfind("delta.", 0) != 0) continue;
    int64_t layer = -1;
    try {
      layer = std::stoll(name.substr(6));
    } catch (const std::exception&) {
      throw InputError(fmt::format("{}: tensor '{}': expected delta.<layer>", file, name));
    }
    if (layer < 0 || layer >= c.num_hidden_layers) {
      throw InputError(fmt::format("{}: tensor '{}': layer {} out of range [0, {})", file, name, layer, c.num_hidden_layers));
    }
    out[layer] = f.tensor(name);
    require_finite_tensor(out[layer], file, name);
  }
  if (out.empty()) throw InputError(fmt::format("{}: no delta.<layer> tensors", file));
  return out;
}

}  // namespace mambadiff
