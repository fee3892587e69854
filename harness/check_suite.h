// `mambadiff check`: the pre-merge equivalence suite. For each model, a matrix of seeded
// scenarios (prefill lengths around chunk boundaries, decode, continuation, injection at every
// layer, snapshot/restore mid-sequence, batch rows with different sequences, bf16) is run on every
// available path and every pair of paths is compared against tolerances derived from the plain
// same-dtype loops (harness/compare.h).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "engine/checkpoint.h"
#include "harness/compare.h"
#include "harness/scenario.h"

namespace mambadiff {

struct CheckCase {
  std::string model;
  std::string scenario;
  std::string paths;  // "a,b"
  std::string dtype;
  double error = 0.0;
  double tolerance = 0.0;
  double nmse = 0.0;
  std::string verdict;  // "agree" | "diverge" | "error" (a path threw) | "skipped"
  uint64_t seed = 0;
  std::string detail;   // first divergence or skip reason
  std::string case_dir;  // where the divergence was written as a case (CheckOptions::cases_dir)
  std::string map_file;  // where its divergence map was written (CheckOptions::maps_dir)
  // The case's identity across runs and commits (the history's "case" key, harness/history.h):
  // "<model>/<scenario>/<paths>/<dtype>".
  std::string id() const { return model + "/" + scenario + "/" + paths + "/" + dtype; }
};

struct CheckReport {
  std::vector<CheckCase> cases;
  double seconds = 0.0;
  bool all_agree() const;
};

struct CheckOptions {
  std::vector<std::filesystem::path> models;  // empty: the embedded defaults
  std::vector<std::string> paths;             // empty: every registered executable path
  uint64_t seed = 20261127;                   // base seed; each case's seed derives from it
  std::string only_scenario;                  // run only scenarios whose name contains this
  std::vector<torch::ScalarType> dtypes;      // run only scenarios of these dtypes; empty: every dtype
  // Whether the matrix scenario `name` passes the two filters above.
  bool selects(const std::string& name, const Scenario& scenario) const;
  bool quiet = false;
  // When set, each divergence is also written there as a divergence case (harness/divergence_case.h),
  // in a directory named <model>.<scenario>.<path a>.<path b>, expected verdict "agree".
  std::filesystem::path cases_dir;
  // --external NAME=DIR: instead of running paths, compare another system's exports of the matrix
  // (DIR/<model>/<scenario>.safetensors, played from the files --emit-scenarios wrote) against the
  // reference, one case per (scenario, NAME). A missing export is a skipped case, never a pass;
  // DIR/<model>/<scenario>.skipped or .error (text, written by the exporter) say why it is missing.
  std::vector<std::pair<std::string, std::filesystem::path>> externals;
  // When set, each divergence is also drawn there as a divergence map (harness/divergence_map.h),
  // <model>.<scenario>.<path a>.<path b>.html: what `check --report F.html` links to.
  std::filesystem::path maps_dir;
};

// "NAME=DIR" -> (NAME, DIR); InputError naming the option unless NAME is a plain name ([A-Za-z0-9_.-]+)
// and DIR an existing directory.
std::pair<std::string, std::filesystem::path> parse_external_option(const std::string& spec);

// `check --emit-scenarios DIR`: the matrix run_check would run (the models, the seed, the
// --scenario filter of `options`) written as scenario files DIR/<model>/<scenario>.json (deltas
// beside them) and DIR/manifest.json, format "mambadiff.check-matrix.v1":
//   {"format", "seed", "cases": [{"id": "<model>/<scenario>", "model", "model_dir", "scenario",
//     "class", "file", "export", "dtype", "seed"}]}
// where "export" is where `--external NAME=EXPORTS` looks for the case (relative to EXPORTS) and
// "class" the scenario without its length or layer ("prefill", "decode", "inject", ...).
// Returns the number of scenarios written.
size_t emit_check_scenarios(const CheckOptions& options, const std::filesystem::path& dir);

// A matrix scenario's class: its name without a trailing length or layer index and without the
// dtype prefix ("bf16_prefill_53", "fp16_prefill_53" -> "prefill", "inject_layer2" -> "inject").
std::string scenario_class(const std::string& scenario_name);

// The named scenarios of the matrix for one model, built from `seed`.
std::vector<std::pair<std::string, Scenario>> check_scenarios(const Mamba2Checkpoint& checkpoint,
                                                              const std::filesystem::path& model_dir, uint64_t seed);

// The embedded default models, sorted: $MAMBADIFF_MODELS/* if set, else corpus/models/* of
// corpus_dir() (harness/corpus_location.h).
std::vector<std::filesystem::path> default_models();

CheckReport run_check(const CheckOptions& options);

void print_check_table(const CheckReport& report);
void write_check_json(const CheckReport& report, const std::filesystem::path& file);
void write_check_junit(const CheckReport& report, const std::filesystem::path& file);

}  // namespace mambadiff
