// A divergence case (SPEC §5, §6): what `repro` replays and `reduce` shrinks, and what `diff`
// (--case-out), `check` (--cases-dir) and `mutants` (--cases-dir) write when two paths part.
//
// A case is a directory:
//   CASE/case.json                 {"format": "mambadiff.case.v1", ...} (below)
//   CASE/scenario.json             the scenario (mambadiff.scenario.v1; its model path is relative
//                                  to it, so `mambadiff diff CASE/scenario.json --paths A,B` works)
//   CASE/scenario.deltas.safetensors   the inject ops' deltas (Scenario::save), when there are any
//   CASE/observed.safetensors      the first diverging tensor as each side and the reference computed
//                                  it when the case was written (`a`, `b`, `reference`; metadata
//                                  names the tensor), for readers without our binaries
//   CASE/<x>.safetensors           a `file:` path's tensors, copied in (paths name them relatively)
// `repro` and `reduce` take the directory or its case.json.
//
// case.json:
//   {"format": "mambadiff.case.v1",
//    "reproduces": "HF transformers #34817: ...",     one line naming the public report (optional)
//    "origin": "check --seed 20261127: tiny/decode",  where the case came from (optional)
//    "scenario": "scenario.json",
//    "model_layers": 2,             the model is run truncated to its first k layers
//    "paths": ["mutant:inter-chunk-axis", "reference"],
//    "tolerance": {"multiplier": 4, "stochastic_multiplier": 2, "stochastic_multiplier_bfloat16": 1.5,
//                  "stochastic_multiplier_float16": 1.5,
//                  "floor_float32": 1e-6, "floor_bfloat16": 2e-3, "floor_float16": 5e-4},
//                  (a stochastic multiplier absent: 0, as cases recorded before them replay)
//    "expected": "diverge",         the verdict the case asserts ("diverge" | "agree")
//    "observed": {"verdict", "class", "logits_error", "logits_tolerance", "logits_nmse",
//                 "first_divergence": null | {"op", "batch", "token", "layer", "tensor", "error",
//                                             "tolerance", "detail"}}}
// A case "reproduces" when the verdict observed on replay equals "expected". Paths named
// "mutant:<name>" are the test mutants; only the commands that plug them in can run them.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>

#include "engine/checkpoint.h"
#include "harness/compare.h"
#include "harness/scenario.h"
#include "harness/scenario_result.h"

namespace mambadiff {

inline constexpr const char* kCaseFormat = "mambadiff.case.v1";

// The class of a divergence, which `reduce` keeps while it shrinks: the kind of tensor that parts
// first (harness/compare.h: "logits", "layer_output", "cache.ssm_states", "dispatch_trace", ...),
// with "+nonfinite" when the error is not finite (a NaN, or infinities that do not match).
// Empty when the comparison agrees.
std::string divergence_class(const Comparison& comparison);

// The reference's result on a scenario and the error of the plain loops of the scenario's dtype
// against it: the scale and the tolerance baseline of every comparison on that scenario.
struct ReferenceRun {
  ScenarioResult reference;
  std::vector<ErrorBaseline> baselines;
};
// `stochastic` false: the baseline without its stochastic runs (harness/tolerance_baseline.h
// plain_baseline: for a caller that adds them only to a comparison that diverged).
ReferenceRun run_reference(const Scenario& scenario, const Mamba2Checkpoint& checkpoint, bool stochastic = true);

// One replay of a scenario on two paths: both results, the reference's (the scale and the
// tolerance baseline) and their comparison.
struct CaseRun {
  std::string path_a, path_b;  // the names compared (a result's `path` is its path's own name)
  ScenarioResult a, b, reference;
  Comparison comparison;
  std::vector<ErrorBaseline> baselines;  // the tolerance baselines compared under (divergence maps redraw them)
  TolerancePolicy policy;
};

// Runs the reference, the plain loops of the scenario's dtype (the tolerance baseline) and both
// paths on `checkpoint`, and compares a with b under `policy`. `file:` names are read as given.
// InputError / PathUnavailable as evaluate_path.
CaseRun run_paths(const Scenario& scenario, const Mamba2Checkpoint& checkpoint, const std::string& path_a,
                  const std::string& path_b, const TolerancePolicy& policy);

struct DivergenceCase {
  std::filesystem::path dir;  // where it was read from; `file:` paths are relative to it
  Scenario scenario;
  int64_t model_layers = 0;   // 0: all of the model's layers
  std::string path_a, path_b;
  TolerancePolicy tolerance;
  std::string expected = "diverge";  // "diverge" | "agree"
  std::string reproduces;            // optional
  std::string origin;                // optional
  // What was observed when the case was written.
  std::string observed_verdict;  // "diverge" | "agree"
  std::string observed_class;
  double logits_error = 0.0, logits_tolerance = 0.0, logits_nmse = 0.0;
  std::optional<Divergence> first_divergence;
  // CASE/observed.safetensors as read ("a", "b", "reference"): the first diverging tensor as each
  // side computed it when the case was written. Required for a numeric first divergence.
  std::map<std::string, torch::Tensor> observed_tensors;

  // `where` is the case directory or its case.json. InputError naming the file and key at fault.
  // The observed tensors are read and checked (a missing or corrupt file is an InputError); a
  // tolerance that is negative, infinite or NaN is one too.
  static DivergenceCase load(const std::filesystem::path& where);
  static DivergenceCase from_json(const nlohmann::json& j, const std::filesystem::path& file);

  // Whether `run` (a replay of this case) computed the recorded observed tensors bit for bit at
  // its first divergence; nullopt when there is nothing to compare (no divergence on one side).
  std::optional<bool> observed_tensors_match(const CaseRun& run) const;

  // The checkpoint this case runs on: the scenario's model, truncated to model_layers.
  // InputError when model_layers exceeds the model's layer count.
  Mamba2Checkpoint checkpoint() const;

  // Replays deterministically: the case's scenario, layers, paths and tolerance policy.
  CaseRun replay() const;

  // Records `run` as this case's observation.
  void observe(const CaseRun& run);

  // Writes the case into directory `out` (created; files replaced): case.json, scenario.json
  // (+ deltas), observed.safetensors from `run` when given, and copies of `file:` inputs.
  void save(const std::filesystem::path& out, const CaseRun* run = nullptr) const;

 private:
  void load_observed_tensors(const nlohmann::json& j, const std::string& source);
};

// A case for a comparison just made (by diff, check, mutants): `scenario` on `checkpoint`'s model
// (all its layers), the paths of `run`, with `run` as its observation.
DivergenceCase make_case(const Scenario& scenario, const Mamba2Checkpoint& checkpoint, const CaseRun& run,
                         const TolerancePolicy& policy, const std::string& expected, const std::string& origin);

// `run` as JSON: {"verdict", "class", "logits_error", "logits_tolerance", "logits_nmse", "first_divergence"}.
nlohmann::ordered_json observation_json(const Comparison& comparison);

// A file-name-safe form of `text` (letters, digits, '-', '_', '.'; anything else becomes '_').
std::string case_dir_name(const std::string& text);

}  // namespace mambadiff
