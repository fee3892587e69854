// `mambadiff diff SCENARIO --paths A,B`: two paths compared, the first divergence located.
#pragma once

#include <filesystem>
#include <string>

#include "harness/compare.h"
#include "harness/scenario.h"

namespace mambadiff {

struct DiffOutcome {
  Comparison comparison;
  std::string dtype;
};

// Runs both paths (and the reference and the plain baseline of the scenario's dtype) on the
// scenario and compares them. InputError on bad input; PathUnavailable if a path cannot run here.
DiffOutcome diff_scenario(const Scenario& scenario, const std::string& path_a, const std::string& path_b);

// {"verdict", "paths", "first_divergence": null | {"op","batch","token","layer","tensor","error","tolerance"}}
std::string diff_json(const DiffOutcome& d);

}  // namespace mambadiff
