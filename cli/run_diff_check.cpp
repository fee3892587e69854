// `run`, `diff` and `check`: the scenario commands.
#include <fmt/format.h>

#include <algorithm>
#include <sstream>

#include "cli/commands.h"
#include "cli/option_checks.h"
#include "cli/torch_threads.h"
#include "engine/checkpoint.h"
#include "engine/errors.h"
#include "engine/output_file.h"
#include "harness/check_report.h"
#include "harness/check_suite.h"
#include "harness/diff_command.h"
#include "harness/divergence_case.h"
#include "harness/divergence_map.h"
#include "harness/history.h"
#include "harness/path_registry.h"
#include "harness/scenario.h"
#include "harness/scenario_runner.h"

namespace mambadiff::cli {

void add_run_command(CLI::App& app, int& exit_code) {
  struct Args {
    std::string scenario, path = "reference", out;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("run", "Run a scenario on one path and write its tensors (SPEC §5)");
  cmd->add_option("scenario", args->scenario, "Scenario JSON")->required();
  cmd->add_option("--path", args->path, "Execution path: reference, chunked, chunked-gpu, plain-float32, ...");
  cmd->add_option("--out", args->out, "Output .safetensors (written atomically)")->required();
  cmd->callback([args, &exit_code] {
    const Scenario scenario = Scenario::load(args->scenario);
    const Mamba2Checkpoint ck = Mamba2Checkpoint::load(scenario.model_dir);
    const ScenarioResult result = evaluate_path(args->path, scenario, ck);
    write_result_file(args->out, result, {{"scenario", args->scenario}, {"model_hash", ck.hash}});
    fmt::print("run: {} on {} ({}): {} ops, seqlen_offset {} -> {}\n", args->scenario, args->path, result.dtype,
               scenario.ops.size(), result.final_cache.seqlen_offset, args->out);
    exit_code = 0;
  });
}

void add_diff_command(CLI::App& app, int& exit_code) {
  struct Args {
    std::string scenario, paths, json, case_out, report;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("diff", "Compare two paths on a scenario and locate the first divergence");
  cmd->add_option("scenario", args->scenario, "Scenario JSON")->required();
  cmd->add_option("--paths", args->paths, "Two paths A,B (file:PATH.safetensors allowed)")->required();
  cmd->add_option("--json", args->json, "Write the verdict as JSON");
  cmd->add_option("--case-out", args->case_out,
                  "On a divergence, write it as a divergence case into this directory (for repro/reduce)");
  cmd->add_option("--report", args->report,
                  "Draw the comparison as one self-contained HTML page (heat map, curves, traces, cache)");
  cmd->callback([args, &exit_code] {
    const auto comma = args->paths.find(',');
    if (comma == std::string::npos || args->paths.find(',', comma + 1) != std::string::npos) {
      throw InputError(fmt::format("--paths '{}': expected two paths A,B", args->paths));
    }
    const Scenario scenario = Scenario::load(args->scenario);
    const std::string path_a = args->paths.substr(0, comma), path_b = args->paths.substr(comma + 1);
    // diff_scenario's comparison, keeping the results (a divergence case is written from them).
    const Mamba2Checkpoint ck = Mamba2Checkpoint::load(scenario.model_dir);
    const CaseRun run = run_paths(scenario, ck, path_a, path_b, TolerancePolicy{});
    const DiffOutcome d{run.comparison, dtype_string(scenario.dtype)};
    const Comparison& c = d.comparison;
    fmt::print("diff {} vs {} on {} ({}): logits error {:.3g} (tolerance {:.3g}, NMSE {:.3g})\n", c.path_a,
               c.path_b, args->scenario, d.dtype, c.logits_error, c.logits_tolerance, c.logits_nmse);
    for (const auto& n : c.notes) fmt::print("note: {}\n", n);
    if (c.first_divergence) {
      fmt::print("DIVERGE: first divergence at {}\n", describe(*c.first_divergence));
    } else {
      fmt::print("AGREE\n");
    }
    if (!args->json.empty()) write_text_atomically(args->json, diff_json(d));
    if (!args->report.empty()) {
      DivergenceMapContext ctx;
      ctx.title = fmt::format("diff {}: {} vs {} ({})", args->scenario, path_a, path_b, d.dtype);
      ctx.command = fmt::format("mambadiff diff {} --paths {}", args->scenario, args->paths);
      ctx.scenario = args->scenario;
      ctx.model = scenario.model_dir.string();
      write_divergence_map(args->report, scenario, run, ctx);
      fmt::print("divergence map written to {}\n", args->report);
    }
    if (!args->case_out.empty() && !c.agree) {
      make_case(scenario, ck, run, TolerancePolicy{}, "agree", fmt::format("diff {} --paths {}", args->scenario, args->paths))
          .save(args->case_out, &run);
      fmt::print("divergence case written to {}\n", args->case_out);
    }
    exit_code = c.agree ? 0 : 1;
  });
}

void add_check_command(CLI::App& app, int& exit_code) {
  struct Args {
    CheckOptions opt;
    std::vector<std::string> models;
    std::string paths, json, junit, cases_dir, emit_dir, report, history, dtypes;
    std::vector<std::string> externals;
    int threads = kDefaultThreads;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("check", "The pre-merge equivalence suite over the embedded (or given) models");
  cmd->add_option("--model", args->models, "Model directory (repeatable); default: the embedded models");
  cmd->add_option("--paths", args->paths, "Comma-separated paths; default: every available path");
  cmd->add_option("--seed", args->opt.seed, "Base seed of the scenario matrix (printed; replays the run)")
      ->check(number_in(0));
  cmd->add_option("--scenario", args->opt.only_scenario, "Only scenarios whose name contains this");
  cmd->add_option("--dtypes", args->dtypes,
                  "Comma-separated: only scenarios of these dtypes (float32, bfloat16, float16); default: all three");
  cmd->add_option("--json", args->json, "Write the report as JSON");
  cmd->add_option("--junit", args->junit, "Write the report as JUnit XML");
  cmd->add_option("--cases-dir", args->cases_dir,
                  "Write each divergence there as a divergence case (for repro/reduce)");
  cmd->add_option("--emit-scenarios", args->emit_dir,
                  "Write the matrix as scenario files DIR/<model>/<scenario>.json and DIR/manifest.json "
                  "(for other systems to play, docs/external.md) and exit");
  cmd->add_option("--external", args->externals,
                  "NAME=DIR (repeatable): compare another system's exports DIR/<model>/<scenario>.safetensors "
                  "of the emitted matrix against reference, instead of running paths");
  cmd->add_option("--report", args->report,
                  "Write the suite as one HTML page, with a divergence map per failing case in <stem>.cases/ beside it");
  cmd->add_option("--history", args->history,
                  "Append each compared case's error and tolerance, with the commit and date, to this JSON-lines file");
  add_threads_option(cmd, args->threads);
  cmd->callback([args, &exit_code] {
    torch::set_num_threads(args->threads);
    CheckOptions opt = args->opt;
    opt.cases_dir = args->cases_dir;
    if (!args->report.empty()) {
      // Before the suite runs (it writes the failing cases' maps beside the page as it goes).
      require_output_folder(args->report, "--report");
      opt.maps_dir = check_report_maps_dir(args->report);
    }
    if (!args->history.empty()) require_output_folder(args->history, "--history");
    const std::string commit = args->history.empty() && args->report.empty() ? "" : current_commit();
    const std::string date = utc_now();
    for (const auto& m : args->models) opt.models.emplace_back(m);
    std::stringstream dtypes(args->dtypes);
    for (std::string d; std::getline(dtypes, d, ',');) opt.dtypes.push_back(parse_dtype(d, "check: --dtypes"));
    if (!args->emit_dir.empty()) {
      if (!args->externals.empty()) throw InputError("check: --emit-scenarios and --external exclude each other");
      const size_t n = emit_check_scenarios(opt, args->emit_dir);
      fmt::print("check: wrote {} scenarios (base seed {}) and manifest.json to {}\n", n, opt.seed, args->emit_dir);
      exit_code = 0;
      return;
    }
    for (const auto& e : args->externals) opt.externals.push_back(parse_external_option(e));
    std::stringstream ss(args->paths);
    for (std::string p; std::getline(ss, p, ',');) {
      path_available(p, torch::kFloat32);  // InputError for an unknown name
      opt.paths.push_back(p);
    }
    fmt::print("check: base seed {} (replay with --seed {})\n", opt.seed, opt.seed);
    fmt::print("{:<10} {:<18} {:<24} {:<9} {:>10} {:>10} {:<8} {}\n", "model", "scenario", "paths", "dtype", "error",
               "tolerance", "verdict", "seed");
    const CheckReport report = run_check(opt);
    print_check_table(report);
    if (!args->json.empty()) write_check_json(report, args->json);
    if (!args->junit.empty()) write_check_junit(report, args->junit);
    if (!args->report.empty()) {
      write_check_report(report, args->report, opt.seed, commit);
      fmt::print("check report written to {} (divergence maps in {})\n", args->report, opt.maps_dir.string());
    }
    if (!args->history.empty()) {
      append_history(args->history, report, commit, date);
      fmt::print("history: {} record(s) appended to {} (commit {})\n",
                 std::count_if(report.cases.begin(), report.cases.end(),
                               [](const CheckCase& c) { return c.verdict == "agree" || c.verdict == "diverge"; }),
                 args->history, commit);
    }
    exit_code = report.all_agree() ? 0 : 1;
  });
}

}  // namespace mambadiff::cli
