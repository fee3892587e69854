// mambadiff: differential verification and fuzzing harness for Mamba2 models.
// Exit codes (SPEC §6): 0 pass, 1 divergence found / goal not met, 2 bad input or usage.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <iostream>

#include "engine/checkpoint.h"
#include "engine/errors.h"
#include "harness/check_suite.h"
#include "harness/diff_command.h"
#include "harness/path_registry.h"
#include "harness/scenario.h"
#include "harness/scenario_runner.h"

using namespace mambadiff;

namespace {

int cmd_run(const std::string& scenario_file, const std::string& path, const std::string& out) {
  const Scenario scenario = Scenario::load(scenario_file);
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(scenario.model_dir);
  const ScenarioResult result = evaluate_path(path, scenario, ck);
  write_result_file(out, result, {{"scenario", scenario_file}, {"model_hash", ck.hash}});
  fmt::print("run: {} on {} ({}): {} ops, seqlen_offset {} -> {}\n", scenario_file, path, result.dtype,
             scenario.ops.size(), result.final_cache.seqlen_offset, out);
  return 0;
}

int cmd_diff(const std::string& scenario_file, const std::string& paths, const std::string& json) {
  const auto comma = paths.find(',');
  if (comma == std::string::npos) throw InputError(fmt::format("--paths '{}': expected two paths A,B", paths));
  const Scenario scenario = Scenario::load(scenario_file);
  const DiffOutcome d = diff_scenario(scenario, paths.substr(0, comma), paths.substr(comma + 1));
  const Comparison& c = d.comparison;
  fmt::print("diff {} vs {} on {} ({}): logits error {:.3g} (tolerance {:.3g}, NMSE {:.3g})\n", c.path_a, c.path_b,
             scenario_file, d.dtype, c.logits_error, c.logits_tolerance, c.logits_nmse);
  for (const auto& n : c.notes) fmt::print("note: {}\n", n);
  if (c.first_divergence) {
    fmt::print("DIVERGE: first divergence at {}\n", describe(*c.first_divergence));
  } else {
    fmt::print("AGREE\n");
  }
  if (!json.empty()) write_text_atomically(json, diff_json(d));
  return c.agree ? 0 : 1;
}

int cmd_check(const CheckOptions& opt, const std::string& json, const std::string& junit) {
  if (!opt.quiet) {
    fmt::print("check: base seed {} (replay with --seed {})\n", opt.seed, opt.seed);
    fmt::print("{:<10} {:<18} {:<24} {:<9} {:>10} {:>10} {:<8} {}\n", "model", "scenario", "paths", "dtype", "error",
               "tolerance", "verdict", "seed");
  }
  const CheckReport report = run_check(opt);
  print_check_table(report);
  if (!json.empty()) write_check_json(report, json);
  if (!junit.empty()) write_check_junit(report, junit);
  return report.all_agree() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"mambadiff: differential verification and fuzzing harness for Mamba2 models"};
  app.require_subcommand(1);

  std::string scenario, path = "reference", out, paths, json, junit;
  auto* run = app.add_subcommand("run", "Run a scenario on one path and write its tensors (SPEC §5)");
  run->add_option("scenario", scenario, "Scenario JSON")->required();
  run->add_option("--path", path, "Execution path (reference, chunked, chunked-gpu, plain-float32, ...)");
  run->add_option("--out", out, "Output .safetensors")->required();

  auto* diff = app.add_subcommand("diff", "Compare two paths on a scenario and locate the first divergence");
  diff->add_option("scenario", scenario, "Scenario JSON")->required();
  diff->add_option("--paths", paths, "Two paths A,B (file:PATH.safetensors allowed)")->required();
  diff->add_option("--json", json, "Write the verdict as JSON");

  CheckOptions check_opt;
  std::vector<std::string> models;
  std::string check_paths;
  auto* check = app.add_subcommand("check", "The pre-merge equivalence suite over the embedded (or given) models");
  check->add_option("--model", models, "Model directory (repeatable); default: the embedded models");
  check->add_option("--paths", check_paths, "Comma-separated paths; default: every available path");
  check->add_option("--seed", check_opt.seed, "Base seed of the scenario matrix");
  check->add_option("--scenario", check_opt.only_scenario, "Only scenarios whose name contains this");
  check->add_option("--json", json, "Write the report as JSON");
  check->add_option("--junit", junit, "Write the report as JUnit XML");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  try {
    if (*run) return cmd_run(scenario, path, out);
    if (*diff) return cmd_diff(scenario, paths, json);
    if (*check) {
      for (const auto& m : models) check_opt.models.emplace_back(m);
      if (!check_paths.empty()) {
        std::stringstream ss(check_paths);
        for (std::string p; std::getline(ss, p, ',');) {
          path_available(p, torch::kFloat32);  // InputError for an unknown name
          check_opt.paths.push_back(p);
        }
      }
      return cmd_check(check_opt, json, junit);
    }
  } catch (const InputError& e) {
    fmt::print(stderr, "mambadiff: error: {}\n", e.what());
    return 2;
  } catch (const PathUnavailable& e) {
    fmt::print(stderr, "mambadiff: path unavailable (skipped): {}\n", e.what());
    return 2;
  }
  return 2;
}
