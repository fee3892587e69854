#include "mutants/catalog.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "engine/errors.h"
#include "harness/path_registry.h"
#include "mutants/cache_mutants.h"
#include "mutants/path_mutants.h"

namespace mambadiff::mutants {

namespace {

// Makes a mutant's path under its path name ("mutant:<name>").
using PathFactory =
    std::function<std::unique_ptr<ExecutionPath>(const std::string&, const Mamba2Checkpoint&, torch::ScalarType)>;

template <typename PathT, typename... Extra>
PathFactory path_of(Extra... extra) {
  return [extra...](const std::string& path_name, const Mamba2Checkpoint& ck,
                    torch::ScalarType dtype) -> std::unique_ptr<ExecutionPath> {
    return std::make_unique<PathT>(path_name, ck, dtype, extra...);
  };
}

template <typename OpsT>
std::function<std::unique_ptr<CacheOps>()> cache_of() {
  return [] { return std::make_unique<OpsT>(); };
}

Mutant path_mutant(const std::string& name, const std::string& reproduces, const std::string& broken,
                   PathFactory make) {
  Mutant m{name, reproduces, broken, nullptr, nullptr};
  m.make_path = [make, path_name = m.path_name()](const Mamba2Checkpoint& ck, torch::ScalarType dtype) {
    return make(path_name, ck, dtype);
  };
  return m;
}

// The real `chunked` path (under the mutant's name) on a broken cache.
Mutant cache_mutant(const std::string& name, const std::string& reproduces, const std::string& broken,
                    std::function<std::unique_ptr<CacheOps>()> make_ops) {
  Mutant m = path_mutant(name, reproduces, broken, path_of<MutantPath>());
  m.make_cache_ops = std::move(make_ops);
  return m;
}

std::vector<Mutant> build_catalog() {
  return {
      path_mutant("stand-in-cache",
                  "The mockcache incident (background/mockcache-incident.md): a stand-in cache without "
                  "seq_len_offset, every forward dispatched as prefill; logits off by 173.76",
                  "every forward runs the prefill branch (zero state, zero conv history)",
                  path_of<StandInCacheDispatch>()),
      path_mutant("continue-as-prefill",
                  "mamba_ssm #641/#536/#500: chunk-wise inference != full-length forward when a populated "
                  "cache is run through the prefill branch",
                  "a cached multi-token forward runs the prefill branch; decode steps use the cache",
                  path_of<ContinueAsPrefill>()),
      cache_mutant("conv-window-misaligned",
                   "The mockcache incident's sequel: a 69.5 logit gap with delta = 0 when the conv window was "
                   "not kept aligned with the injected state",
                   "inject moves the layer's conv window one token on (shifted left, newest column zero)",
                   cache_of<InjectMisalignsConvWindow>()),
      path_mutant("decode-no-dt-clamp",
                  "HF transformers 5.17 Mamba2 decode (T == 1) skips time_step_limit; measured 5e-2 relative "
                  "with limit (0, 0.05) (REFERENCE.md)",
                  "the decode step uses softplus(dt + dt_bias) unclamped",
                  path_of<DecodeWithoutDtClamp>()),
      path_mutant("repeat-groups",
                  "HF transformers PR #37533, #38320: repeat instead of repeat_interleave when broadcasting "
                  "groups to heads",
                  "head h reads B/C group h % G instead of h / (H/G)", path_of<RepeatNotInterleave>()),
      path_mutant("gated-norm-grouping",
                  "HF transformers PR #35943, #40861 and mamba_ssm #647: gated RMSNorm grouped in one "
                  "implementation, ungrouped in the other, when n_groups > 1",
                  "the gated norm reduces over the other group size (d_inner vs d_inner / n_groups)",
                  path_of<OtherGatedNormGrouping>()),
      path_mutant("inter-chunk-axis",
                  "HF transformers #34817 (fixed by #35154; again in Zamba2/Nemotron-H #47246, #47475): wrong "
                  "reduction axis in the inter-chunk state passing once L > chunk_size",
                  "the inter-chunk recurrence sums over the target chunk instead of the source chunk",
                  path_of<BuggyScan>(ScanBug::kInterChunkAxis)),
      path_mutant("continue-drops-initial-state",
                  "HF transformers #46032 (PR #46741): a cached multi-token forward ignored the cached state",
                  "the continue branch scans from a zero initial state",
                  path_of<ContinueDropsInitialState>()),
      path_mutant("dt-clamp-time-step-min",
                  "HF transformers PR #35154: dt clamped to time_step_min instead of time_step_limit",
                  "dt = max(softplus(dt + dt_bias), config time_step_min), no upper limit",
                  path_of<DtClampedToTimeStepMin>()),
      path_mutant("segsum-exp-before-mask",
                  "mamba_ssm PR #713: exp of segment sums above 0 gives inf/NaN; clamp them to <= 0",
                  "the scan takes exp of the unmasked segment sums, then masks: inf * 0 = NaN past ~88.7",
                  path_of<BuggyScan>(ScanBug::kExpBeforeMask)),
      cache_mutant("snapshot-aliases-storage",
                   "SPEC §3 snapshot/restore contract; mamba_ssm selective_state_update updates the state in "
                   "place (REFERENCE.md), so a snapshot holding references changes with the cache",
                   "snapshot() keeps the live tensors, restore() copies the cache onto itself",
                   cache_of<AliasingSnapshot>()),
      path_mutant("bf16-state",
                  "vLLM #43301: bf16 SSM state in the chunked scan vs fp32 in the decode step degraded accuracy",
                  "the SSM state is rounded to bfloat16 after every forward",
                  path_of<StateRoundedToBf16>()),
      path_mutant("padded-tail-leaks",
                  "HF transformers PR #46773, #41790: padding not masked in some batch shapes -- here the "
                  "padded tail of the last chunk decays the state",
                  "the last chunk's padding repeats the last dt instead of 0",
                  path_of<BuggyScan>(ScanBug::kPaddedDtLeaks)),
      path_mutant("bf16-run-state-truncated",
                  "vLLM/SGLang's bf16 SSM cache (--mamba-ssm-cache-dtype; SGLang PR #10258, default on TPU since "
                  "tpu-inference PR #2482) written with a truncating fp32->bf16 conversion (rtz, not round-to-nearest)",
                  "bf16 runs only: the SSM state is truncated to bfloat16 every 2 tokens and after every decode step",
                  path_of<Bf16RunStateTruncatedToBf16>()),
  };
}

}  // namespace

ScenarioResult Mutant::evaluate(const Scenario& scenario, const Mamba2Checkpoint& ck) const {
  const auto path = make_path(ck, scenario.dtype);
  if (!make_cache_ops) return run_scenario(scenario, *path);
  const auto ops = make_cache_ops();
  return run_scenario(scenario, *path, *ops);
}

const std::vector<Mutant>& mutant_catalog() {
  static const std::vector<Mutant> kCatalog = build_catalog();
  return kCatalog;
}

const Mutant& find_mutant(const std::string& name) {
  const std::string bare = name.rfind(kMutantPrefix, 0) == 0 ? name.substr(std::string(kMutantPrefix).size()) : name;
  std::vector<std::string> names;
  for (const auto& m : mutant_catalog()) {
    if (m.name == bare) return m;
    names.push_back(m.name);
  }
  throw InputError(fmt::format("unknown mutant '{}' (the catalog: {})", name, fmt::join(names, ", ")));
}

void install_mutant_paths() {
  PathProvider p;
  p.prefix = kMutantPrefix;
  p.names = [] {
    std::vector<std::string> names;
    for (const auto& m : mutant_catalog()) names.push_back(m.path_name());
    return names;
  };
  p.evaluate = [](const std::string& name, const Scenario& scenario, const Mamba2Checkpoint& ck) {
    return find_mutant(name).evaluate(scenario, ck);
  };
  install_path_provider(std::move(p));
}

}  // namespace mambadiff::mutants
