#include "harness/tolerance_baseline.h"

#include "harness/path_registry.h"
#include "harness/scenario_runner.h"
#include "oracles/reference_path.h"

namespace mambadiff {

void add_stochastic_run(ErrorBaseline& baseline, const ErrorBaseline& run) {
  for (const auto& [key, error] : run.error) {
    auto [it, inserted] = baseline.stochastic_error.emplace(key, error);
    // NaN (a baseline that computed NaN) must survive: std::max would drop it on one side.
    if (!inserted && !(it->second >= error)) it->second = error;
  }
}

namespace {

// The stochastic runs on one path (its weights copied once), reseeded before each.
template <typename StochasticPath>
void add_stochastic_runs(ErrorBaseline& baseline, const Scenario& scenario, const Mamba2Checkpoint& ck,
                         const ScenarioResult& reference) {
  // Its weights and buffers are float64 (values on the modelled format's grid): checked as a
  // float64 path is, before they are copied.
  require_memory_for_scenario(scenario, ck.config, torch::kFloat64);
  StochasticPath path(ck, kStochasticBaselineSeed);
  for (int run = 0; run < kStochasticBaselineRuns; ++run) {
    path.set_rounding_seed(kStochasticBaselineSeed + static_cast<uint64_t>(run));
    add_stochastic_run(baseline, measure_baseline(run_scenario(scenario, path), reference));
  }
}

}  // namespace

ErrorBaseline plain_baseline(const Scenario& scenario, const Mamba2Checkpoint& ck, const ScenarioResult& reference) {
  return measure_baseline(evaluate_path(baseline_path(scenario.dtype), scenario, ck), reference);
}

void add_stochastic_baseline(ErrorBaseline& baseline, const Scenario& scenario, const Mamba2Checkpoint& ck,
                             const ScenarioResult& reference) {
  if (baseline.dtype == dtype_string(torch::kBFloat16)) {  // the plain loops' dtype
    add_stochastic_runs<StochasticBFloat16Path>(baseline, scenario, ck, reference);
  } else if (baseline.dtype == dtype_string(torch::kFloat16)) {
    add_stochastic_runs<StochasticFloat16Path>(baseline, scenario, ck, reference);
  } else {
    add_stochastic_runs<StochasticFloat32Path>(baseline, scenario, ck, reference);
  }
}

ErrorBaseline derive_baseline(const Scenario& scenario, const Mamba2Checkpoint& ck, const ScenarioResult& reference) {
  ErrorBaseline baseline = plain_baseline(scenario, ck, reference);
  add_stochastic_baseline(baseline, scenario, ck, reference);
  return baseline;
}

}  // namespace mambadiff
