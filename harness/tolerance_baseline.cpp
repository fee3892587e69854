#include "harness/tolerance_baseline.h"

#include <algorithm>
#include <memory>

#include "harness/path_registry.h"
#include "oracles/reference_path.h"

namespace mambadiff {

void add_stochastic_run(ErrorBaseline& baseline, const ErrorBaseline& run) {
  for (const auto& [key, error] : run.error) {
    auto [it, inserted] = baseline.stochastic_error.emplace(key, error);
    // NaN (a baseline that computed NaN) must survive: std::max would drop it on one side.
    if (!inserted && !(it->second >= error)) it->second = error;
  }
}

ErrorBaseline derive_baseline(const Scenario& scenario, const Mamba2Checkpoint& ck, const ScenarioResult& reference) {
  ErrorBaseline baseline = measure_baseline(evaluate_path(baseline_path(scenario.dtype), scenario, ck), reference);
  const bool bf16 = baseline.dtype == dtype_string(torch::kBFloat16);  // the plain loops' dtype
  for (int run = 0; run < kStochasticBaselineRuns; ++run) {
    const uint64_t seed = kStochasticBaselineSeed + static_cast<uint64_t>(run);
    std::unique_ptr<ExecutionPath> path;
    if (bf16) path = std::make_unique<StochasticBFloat16Path>(ck, seed);
    else path = std::make_unique<StochasticFloat32Path>(ck, seed);
    add_stochastic_run(baseline, measure_baseline(run_scenario(scenario, *path), reference));
  }
  return baseline;
}

}  // namespace mambadiff
