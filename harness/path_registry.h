// The registry of execution paths (SPEC §4). The harness knows paths only by name:
//   reference        float64 sequential oracle (oracles/)
//   plain-float32    the oracle's loops in float32 (tolerance baseline)
//   plain-bfloat16   the oracle's loops in bfloat16 (tolerance baseline)
//   plain-float16    the oracle's loops in float16 (tolerance baseline)
//   chunked          ATen chunked SSD on the CPU, in the scenario's dtype
//   chunked-gpu      the same on the GPU (skipped without one)
//   cuda             fused CUDA kernels (cuda_path/, kernels/); float32 and bfloat16, GPU only
//   file:PATH        tensors exported by another system, in `run`'s naming
// Adding a path is one Entry line in path_registry.cpp. Each entry has a role (PathRole): what the
// commands do with a path is asked of the registry (path_role, is_oracle, baseline_path), never
// read off its name.
#pragma once

#include <filesystem>
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

// What a path is for.
enum class PathRole {
  kOracle,          // "reference": float64 loops; tolerance 0 and the scale of every comparison
  kBaseline,        // "plain-<dtype>": the oracle's loops in a low precision, whose error against the
                    // oracle sets the tolerance of that dtype (harness/compare.h); not under test
  kDifferentiable,  // an implementation under test built on ATen autograd ("chunked", "chunked-gpu",
                    // "cuda"): `check` compares it and `optimize` can differentiate through it
  kExternalFile,    // "file:PATH": tensors another system exported; nothing runs
  kProvided,        // plugged in through a PathProvider (the mutants): under test, run by its provider
};
const char* role_name(PathRole role);

// The role of a path name. InputError for a name nothing answers.
PathRole path_role(const std::string& name);
// Whether `name` is the oracle (false for any other name, known or not).
bool is_oracle(const std::string& name);
// The oracle's name ("reference").
std::string oracle_path();
// The baseline bounding a run in `run_dtype`: the baseline of that dtype if one is registered, else
// the float32 one (bf16 and fp16 runs are bounded by their own loops, others by fp32's).
std::string baseline_path(torch::ScalarType run_dtype);

// Names of the executable paths registered (available or not), in registry order.
std::vector<std::string> registered_paths();
// Those of them with `role`.
std::vector<std::string> registered_paths(PathRole role);

// Builds the named executable path for a checkpoint and run dtype. Throws PathUnavailable when it
// cannot run here, InputError for an unknown name.
std::unique_ptr<ExecutionPath> make_path(const std::string& name, const Mamba2Checkpoint& checkpoint,
                                         torch::ScalarType dtype);

// Whether `make_path` would succeed for this name and dtype; `why` gets the reason if not.
bool path_available(const std::string& name, torch::ScalarType dtype, std::string* why = nullptr);

// The result of a path on a scenario: runs it, or reads a `file:` path.
ScenarioResult evaluate_path(const std::string& name, const Scenario& scenario, const Mamba2Checkpoint& checkpoint);

// Whether `name` is a `file:PATH` path (role kExternalFile), and the PATH of one.
bool is_file_path(const std::string& name);
std::filesystem::path file_path_target(const std::string& name);
// The `file:` path name of `file`.
std::string file_path_name(const std::filesystem::path& file);

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
