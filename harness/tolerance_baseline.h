// The tolerance baseline of a scenario (harness/compare.h): how far a correct implementation of the
// scenario's precision may be from the float64 oracle, measured rather than guessed.
//
// It holds, tensor by tensor, two errors against the oracle (TolerancePolicy weighs them):
//   * error: the plain loops of that precision (the registry's baseline path: "plain-float32" or
//     "plain-bfloat16"), rounding to nearest as hardware does;
//   * stochastic_error: the worst of kStochasticBaselineRuns runs of the same loops under stochastic
//     rounding (oracles/stochastic_rounding.h), each from its own fixed seed.
// One deterministic run can be lucky where a tensor is ill-conditioned (a tiny model whose layer
// output is a sum that cancels): its error then says nothing about the error of an implementation
// that rounds in other places. The stochastic runs sample that error. Fixed seeds: the baseline,
// and so every verdict, replays bit for bit.
#pragma once

#include "engine/checkpoint.h"
#include "harness/compare.h"
#include "harness/scenario.h"

namespace mambadiff {

// Four samples: a correct implementation's error is one more draw, which exceeds the worst of K
// draws with probability 1 / (K + 1) where the stochastic term decides (TolerancePolicy's
// stochastic multipliers cover that); each run costs one pass of the loops, and `check` on the
// embedded models went from 1.5 s to 10 s with four (docs/fuzz.md, "The tolerance class, narrowed").
inline constexpr int kStochasticBaselineRuns = 4;
// Run k rounds from seed kStochasticBaselineSeed + k.
inline constexpr uint64_t kStochasticBaselineSeed = 0x5EED0000u;

// Adds one stochastically rounded run (its `error`, measured by measure_baseline) to
// `baseline.stochastic_error`: the worst of the runs so far, key by key; NaN is kept.
void add_stochastic_run(ErrorBaseline& baseline, const ErrorBaseline& run);

// The baseline of `scenario` against the oracle's result on it, for the scenario's dtype.
ErrorBaseline derive_baseline(const Scenario& scenario, const Mamba2Checkpoint& checkpoint,
                              const ScenarioResult& reference);

// Its two halves. The stochastic runs only ever raise a tolerance, so a comparison that agrees
// under the plain loops' error alone agrees under the whole baseline: the fuzz targets compare
// with plain_baseline first and add the stochastic runs only to a comparison that diverged (the
// verdict is the same, at a fraction of the cost; the reported tolerances are the whole baseline's).
ErrorBaseline plain_baseline(const Scenario& scenario, const Mamba2Checkpoint& checkpoint,
                             const ScenarioResult& reference);
void add_stochastic_baseline(ErrorBaseline& baseline, const Scenario& scenario, const Mamba2Checkpoint& checkpoint,
                             const ScenarioResult& reference);

}  // namespace mambadiff
