// The registry of execution paths (SPEC §4). The harness knows paths only by name:
//   reference        float64 sequential oracle (oracles/)
//   plain-float32    the oracle's loops in float32 (tolerance baseline)
//   plain-bfloat16   the oracle's loops in bfloat16 (tolerance baseline)
//   chunked          ATen chunked SSD on the CPU, in the scenario's dtype
//   chunked-gpu      the same on the GPU (skipped without one)
//   cuda             fused CUDA kernels (cuda_path/, kernels/); float32 and bfloat16, GPU only
//   file:PATH        tensors exported by another system, in `run`'s naming
// Adding a path is one Entry line in path_registry.cpp.
#pragma once

#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/execution_path.h"
#include "harness/scenario_runner.h"

namespace mambadiff {

// A path that cannot run a case here (no GPU, unsupported dtype): reported as "skipped" with the
// reason, never as a pass.
class PathUnavailable : public std::runtime_error {
 public:
  explicit PathUnavailable(const std::string& why) : std::runtime_error(why) {}
};

// Names of the executable paths registered (available or not).
std::vector<std::string> registered_paths();

// Builds the named executable path for a checkpoint and run dtype. Throws PathUnavailable when it
// cannot run here, InputError for an unknown name.
std::unique_ptr<ExecutionPath> make_path(const std::string& name, const Mamba2Checkpoint& checkpoint,
                                         torch::ScalarType dtype);

// Whether `make_path` would succeed for this name and dtype; `why` gets the reason if not.
bool path_available(const std::string& name, torch::ScalarType dtype, std::string* why = nullptr);

// The result of a path on a scenario: runs it, or reads a `file:` path.
ScenarioResult evaluate_path(const std::string& name, const Scenario& scenario, const Mamba2Checkpoint& checkpoint);

bool is_file_path(const std::string& name);

// Paths from outside the registry, for names that start with `prefix`: the test mutants
// ("mutant:<name>", mutants/) plug in here from the commands that run them (repro, reduce,
// mutants), so that the product registry never lists them. path_available() and evaluate_path()
// consult it; make_path() does not (a plugged-in path may bring its own cache, see CacheOps).
struct PathProvider {
  std::string prefix;                             // e.g. "mutant:"
  std::function<std::vector<std::string>()> names;  // the full names it answers
  // Runs the named path on the scenario; InputError for a name it does not know.
  std::function<ScenarioResult(const std::string& name, const Scenario&, const Mamba2Checkpoint&)> evaluate;
};
// Replaces any provider installed earlier with the same prefix.
void install_path_provider(PathProvider provider);

}  // namespace mambadiff
