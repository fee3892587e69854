#include "harness/diff_command.h"

#include <nlohmann/json.hpp>

#include "engine/checkpoint.h"
#include "harness/divergence_case.h"

namespace mambadiff {

DiffOutcome diff_scenario(const Scenario& scenario, const std::string& path_a, const std::string& path_b) {
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(scenario.model_dir);
  return {run_paths(scenario, ck, path_a, path_b, TolerancePolicy{}).comparison, dtype_string(scenario.dtype)};
}

std::string diff_json(const DiffOutcome& d) {
  const Comparison& c = d.comparison;
  nlohmann::json first = nullptr;
  if (c.first_divergence) {
    const Divergence& v = *c.first_divergence;
    auto opt = [](int64_t x) { return x < 0 ? nlohmann::json(nullptr) : nlohmann::json(x); };
    first = {{"op", v.op},         {"batch", opt(v.batch)}, {"token", opt(v.token)}, {"layer", opt(v.layer)},
             {"tensor", v.tensor}, {"error", v.error},      {"tolerance", v.tolerance}, {"detail", v.detail}};
  }
  nlohmann::json j = {{"verdict", c.agree ? "agree" : "diverge"},
                      {"paths", {c.path_a, c.path_b}},
                      {"dtype", d.dtype},
                      {"logits_error", c.logits_error},
                      {"logits_tolerance", c.logits_tolerance},
                      {"logits_nmse", c.logits_nmse},
                      {"first_divergence", first},
                      {"notes", c.notes}};
  return j.dump(1) + "\n";
}

}  // namespace mambadiff
