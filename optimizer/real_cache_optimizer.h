// The real-cache optimizer (SPEC §8): finds a perturbation Δ of the SSM state on the very cache
// object and code path inference uses, restores the cache bit-identically, and proves the Δ
// works in deployment. The cure for the MockCache incident (shared/background).
//
// Injection point, the same everywhere: prefill all prompt tokens but the last, add Δ to
// ssm_states, step the last prompt token; that step's logits rank target[0]; further target
// tokens are stepped in teacher-forced, each ranking the next.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "engine/checkpoint.h"
#include "engine/execution_path.h"

namespace mambadiff {

struct OptimizeOptions {
  std::vector<int64_t> prompt;  // >= 2 tokens
  std::vector<int64_t> target;  // >= 1 token
  std::vector<int64_t> layers;  // layers whose ssm_states get a Δ
  std::string loss = "ce";      // "ce" | "margin"
  double margin = 0.0;          // required logit margin of each target over the runner-up
  double budget_l2 = 0.0;       // per layer; 0 = unbounded
  double budget_linf = 0.0;     // per element; 0 = unbounded
  std::string optimizer = "adam";  // "adam" | "pgd" (signed gradient steps)
  double lr = 0.05;
  int64_t steps = 300;
  uint64_t seed = 0;            // Δ starts at 0; the seed drives nothing random yet but is recorded
  std::string path = "chunked";
  int64_t generate_tokens = 8;  // greedy continuation shown with and without Δ
  bool cuda_graph = true;       // on a GPU path: capture the iteration once, replay it (same kernels)
};

struct StepReport {
  int64_t step = 0;
  double loss = 0.0;
  int64_t rank = 0;     // worst rank over the target tokens (V + 1 when the logits are not finite)
  double margin = 0.0;  // worst (target logit - best other logit)
  double delta_l2 = 0.0;
};

struct RankReport {
  int64_t rank = 0;          // worst over target tokens (1 = all targets argmax; V + 1 = logits not finite)
  double probability = 0.0;  // of target[0]
  double margin = 0.0;       // worst (target logit - runner-up)
};

struct OptimizeResult {
  std::map<int64_t, torch::Tensor> delta;  // layer -> [1, H, P, N] fp32
  int64_t steps = 0;
  double final_loss = 0.0;
  RankReport simulated;                              // the loop's sequence, final Δ
  RankReport deployed;                               // fresh cache, prefill, add Δ, step
  std::map<std::string, int64_t> deployed_rank_by_path;  // every other available path
  std::map<std::string, std::string> skipped_paths;      // path -> why
  std::map<int64_t, double> delta_l2_by_layer;
  bool zero_delta_gate_passed = false;
  double zero_delta_gate_max_diff = 0.0;
  bool restore_bit_identical = false;
  bool interrupted = false;
  // The step whose loss or Δ was NaN or infinite (the loop stopped there; a failure), or -1.
  int64_t nonfinite_step = -1;
  double seconds_per_step = 0.0;  // the median of step_seconds
  std::vector<double> step_seconds;  // every completed step's wall time, in order (`bench` drops the first)
  bool cuda_graph = false;  // whether the iterations after the first two were graph replays
  int64_t graph_kernels = 0;  // kernels one replayed iteration launches (the captured graph's kernel nodes)
  std::vector<int64_t> generated_without_delta, generated_with_delta;
};

// Thrown when the zero-Δ gate fails: the loop's logits at Δ = 0 are not bitwise the deployment
// sequence's on the same path (the incident's failure), with the measured difference.
class ZeroDeltaGateFailed : public std::runtime_error {
 public:
  explicit ZeroDeltaGateFailed(const std::string& what) : std::runtime_error(what) {}
};

// Runs the optimizer. `interrupt` (may be null) is polled every step: when set, the loop stops,
// the cache is restored and the result is marked interrupted. InputError on bad options.
OptimizeResult optimize_delta(const Mamba2Checkpoint& checkpoint, const OptimizeOptions& options,
                              const std::function<void(const StepReport&)>& progress = {},
                              const std::atomic<bool>* interrupt = nullptr);

// The same on explicit path objects: the loop runs on `loop_path`, the zero-Δ gate and the
// deployment on `deploy_path`. In production both are the same path (optimize_delta); tests hand
// a planted loop path to show the gate catches a world that differs from deployment.
OptimizeResult optimize_with_paths(const Mamba2Checkpoint& checkpoint, ExecutionPath& loop_path,
                                   ExecutionPath& deploy_path, const OptimizeOptions& options,
                                   const std::function<void(const StepReport&)>& progress = {},
                                   const std::atomic<bool>* interrupt = nullptr);

// The loop on a cache the caller prefilled with prompt[:-1] on `loop_path` (batch 1). Whatever
// happens (goal reached, interrupt, exception), the cache is restored bit-identically to its
// state at entry, in the same storage, before this returns or throws.
OptimizeResult optimize_on_cache(const Mamba2Checkpoint& checkpoint, ExecutionPath& loop_path, Mamba2Cache& cache,
                                 ExecutionPath& deploy_path, const OptimizeOptions& options,
                                 const std::function<void(const StepReport&)>& progress = {},
                                 const std::atomic<bool>* interrupt = nullptr);

// Where each of a cache's states lives (data pointers), to prove a restore wrote into the same storage.
struct CacheStorage {
  std::vector<const void*> conv_states, ssm_states;
};
CacheStorage storage_of(const Mamba2Cache& cache);
// Whether `cache` holds exactly `snap` (seqlen_offset, every conv and ssm state's bytes) in the
// storage recorded in `storage`, with no autograd history: the optimizer's restore guarantee.
bool restored_bit_identically(const Mamba2Cache& cache, const Mamba2Cache::Snapshot& snap, const CacheStorage& storage);

// Deployment on a path object (see deploy_delta).
RankReport deploy_on(ExecutionPath& path, const std::vector<int64_t>& prompt, const std::vector<int64_t>& target,
                     const std::map<int64_t, torch::Tensor>& delta, int64_t generate_tokens = 0,
                     std::vector<int64_t>* generated = nullptr, const std::atomic<bool>* interrupt = nullptr);

// Deployment: a fresh cache on `path`, prefill prompt[:-1], add Δ, step; ranks of the targets
// (teacher-forced). Also the greedy continuation of `generate_tokens` tokens after the prompt;
// `interrupt` (may be null) is polled before each generated token: when set, generation stops
// and `generated` holds the tokens so far.
RankReport deploy_delta(const Mamba2Checkpoint& checkpoint, const std::string& path,
                        const std::vector<int64_t>& prompt, const std::vector<int64_t>& target,
                        const std::map<int64_t, torch::Tensor>& delta, int64_t generate_tokens = 0,
                        std::vector<int64_t>* generated = nullptr, const std::atomic<bool>* interrupt = nullptr);

// Δ files (SPEC §8): one tensor per layer, `delta.<layer>` [1, H, P, N] fp32 (adds unchanged to a
// HuggingFace cache's recurrent_states), with prompt, target, model hash and settings in the
// metadata. Atomic.
void save_delta(const std::string& file, const OptimizeResult& result, const OptimizeOptions& options,
                const Mamba2Checkpoint& checkpoint);
std::map<int64_t, torch::Tensor> load_delta(const std::string& file, const Mamba2Config& config);

}  // namespace mambadiff
