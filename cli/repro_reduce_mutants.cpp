// `repro`, `reduce` and `mutants`: the divergence-case commands (SPEC §6, §7). These three plug the
// test mutant catalog (mutants/) into path evaluation, so a case that names "mutant:<name>"
// replays and reduces; `run`, `diff` and `check` know only the product paths.
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/interrupt.h"
#include "cli/option_checks.h"
#include "cli/torch_threads.h"
#include "engine/output_file.h"
#include "harness/check_suite.h"
#include "harness/divergence_case.h"
#include "harness/divergence_map.h"
#include "harness/reduce.h"
#include "mutants/catalog.h"
#include "mutants/kill_matrix.h"

namespace mambadiff::cli {

namespace {

std::string where_of(const Divergence& d) { return describe(d); }

bool same_place(const Divergence& a, const Divergence& b) {
  return a.op == b.op && a.batch == b.batch && a.token == b.token && a.layer == b.layer && a.tensor == b.tensor;
}

}  // namespace

void add_repro_command(CLI::App& app, int& exit_code) {
  struct Args {
    std::string case_path, json, report;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("repro", "Replay a divergence case deterministically (exit 0 when its verdict is the expected one)");
  cmd->add_option("case", args->case_path, "Case directory (or its case.json)")->required();
  cmd->add_option("--json", args->json, "Write the replay's verdict as JSON");
  cmd->add_option("--report", args->report,
                  "Draw the replay as one self-contained HTML page (heat map, curves, traces, cache)");
  cmd->callback([args, &exit_code] {
    mutants::install_mutant_paths();
    const auto t0 = std::chrono::steady_clock::now();
    const DivergenceCase c = DivergenceCase::load(args->case_path);
    const CaseRun run = c.replay();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const Comparison& cmp = run.comparison;
    const std::string verdict = cmp.agree ? "agree" : "diverge";
    const bool reproduced = verdict == c.expected;
    const std::string cls = divergence_class(cmp);

    fmt::print("repro: {}\n", args->case_path);
    if (!c.reproduces.empty()) fmt::print("  reproduces: {}\n", c.reproduces);
    fmt::print("  paths: {} vs {} ({}), model {} on {} layer(s), {} ops\n", c.path_a, c.path_b,
               dtype_string(c.scenario.dtype), c.scenario.model_dir.string(), c.model_layers, c.scenario.ops.size());
    fmt::print("  verdict: {} (expected {}): logits error {:.3g} vs tolerance {:.3g} (NMSE {:.3g})\n", verdict,
               c.expected, cmp.logits_error, cmp.logits_tolerance, cmp.logits_nmse);
    if (cmp.first_divergence) fmt::print("  first divergence: {} [class {}]\n", where_of(*cmp.first_divergence), cls);
    bool same = false;
    if (c.first_divergence) {
      same = cmp.first_divergence && same_place(*cmp.first_divergence, *c.first_divergence);
      fmt::print("  recorded:         {} [class {}]{}\n", where_of(*c.first_divergence), c.observed_class,
                 same ? " -- same place" : " -- not where it parts now");
    }
    bool tensors_compared = false, tensors_identical = false;
    if (same) {
      const std::optional<bool> match = c.observed_tensors_match(run);
      tensors_compared = match.has_value();
      tensors_identical = match.value_or(false);
    }
    if (tensors_compared) {
      fmt::print("  observed tensors: {}\n", tensors_identical ? "bit-identical to the recorded ones"
                                                                : "differ from the recorded ones (another machine or build?)");
    }
    fmt::print("{} in {:.2f} s\n", reproduced ? "REPRODUCED" : fmt::format("NOT REPRODUCED: observed {}, expected {}", verdict, c.expected),
               seconds);
    if (!args->json.empty()) {
      nlohmann::ordered_json j = observation_json(cmp);
      j["case"] = args->case_path;
      j["reproduces"] = c.reproduces;
      j["paths"] = {c.path_a, c.path_b};
      j["dtype"] = dtype_string(c.scenario.dtype);
      j["model_layers"] = c.model_layers;
      j["expected"] = c.expected;
      j["reproduced"] = reproduced;
      j["recorded_class"] = c.observed_class;
      j["same_first_divergence"] = same;
      j["observed_tensors_identical"] = tensors_compared ? nlohmann::ordered_json(tensors_identical) : nullptr;
      j["seconds"] = seconds;
      write_text_atomically(args->json, j.dump(1) + "\n");
    }
    if (!args->report.empty()) {
      DivergenceMapContext ctx;
      ctx.title = fmt::format("repro {}: {} vs {} ({})", args->case_path, c.path_a, c.path_b,
                              dtype_string(c.scenario.dtype));
      ctx.command = "mambadiff repro " + args->case_path;
      ctx.scenario = c.scenario.file.lexically_normal().string();
      ctx.model = fmt::format("{} ({} layer(s))", c.scenario.model_dir.lexically_normal().string(), c.model_layers);
      write_divergence_map(args->report, c.scenario, run, ctx);
      fmt::print("divergence map written to {}\n", args->report);
    }
    exit_code = reproduced ? 0 : 1;
  });
}

void add_reduce_command(CLI::App& app, int& exit_code) {
  struct Args {
    std::string case_path, out;
    ReduceOptions opt;
    int threads = kDefaultThreads;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("reduce", "Shrink a divergence case while it still diverges the same way");
  cmd->add_option("case", args->case_path, "Case directory (or its case.json)")->required();
  cmd->add_option("-o,--out", args->out, "Directory to write the reduced case to")->required();
  cmd->add_option("--max-seconds", args->opt.max_seconds, "Wall-clock budget (the best case so far is written)")
      ->check(number_in(0));
  cmd->add_option("--max-candidates", args->opt.max_candidates, "Replays to try at most")->check(number_in(0));
  cmd->add_option("--exporter", args->opt.exporter,
                  "For a case with a file: side: the command that exports a scenario on that system, with {scenario} "
                  "and {out} (e.g. \"python tools/ecosystem/export.py --backend mamba_ssm {scenario} --out {out}\"); "
                  "run once per candidate");
  add_threads_option(cmd, args->threads);
  cmd->callback([args, &exit_code] {
    torch::set_num_threads(args->threads);
    mutants::install_mutant_paths();
    const DivergenceCase input = DivergenceCase::load(args->case_path);
    ReduceOptions opt = args->opt;
    opt.report = [](const std::string& line) {
      fmt::print("{}\n", line);
      std::fflush(stdout);
    };
    // Ctrl-C stops the search; the best case so far is written (atomically) below.
    const InterruptScope ctrl_c;
    opt.interrupt = ctrl_c.flag_ptr();
    // The exporter's candidates (each a checkpoint, a scenario and an export) in a folder of their
    // own, removed when the reduced case is written (or on error).
    struct WorkDir {
      std::filesystem::path path;
      ~WorkDir() {
        std::error_code ec;
        if (!path.empty()) std::filesystem::remove_all(path, ec);
      }
    } work;
    if (!opt.exporter.empty()) {
      work.path = std::filesystem::temp_directory_path() / fmt::format("mambadiff-reduce-{}", ::getpid());
      opt.work_dir = work.path;
    }
    const ReduceOutcome r = reduce_case(input, opt);
    if (!r.diverges) {
      fmt::print("reduce: {} does not diverge here ({} vs {} agree): nothing to reduce\n", args->case_path,
                 input.path_a, input.path_b);
      exit_code = 1;
      return;
    }
    DivergenceCase out = r.reduced;
    out.origin = input.origin.empty() ? fmt::format("reduced from {}", args->case_path)
                                      : fmt::format("{}; reduced from {}", input.origin, args->case_path);
    out.save(args->out, &r.run);
    fmt::print("reduce: wrote {}: {} (from {}); {} steps, {} candidates in {:.1f} s{}\n", args->out,
               scenario_size(out.scenario, out.model_layers), scenario_size(input.scenario, input.model_layers),
               r.steps, r.candidates, r.seconds, r.interrupted ? " (interrupted: the best case so far)" : "");
    exit_code = r.interrupted ? 1 : 0;
  });
}

void add_mutants_command(CLI::App& app, int& exit_code) {
  struct Args {
    mutants::KillOptions opt;
    std::vector<std::string> models;
    std::string json, cases_dir;
    int threads = kDefaultThreads;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("mutants", "Run check's scenario matrix against the mutant catalog; print the kill matrix");
  cmd->add_option("--model", args->models, "Model directory (repeatable); default: the embedded models");
  cmd->add_option("--seed", args->opt.seed, "Base seed of check's scenario matrix")->check(number_in(0));
  cmd->add_option("--mutant", args->opt.only_mutants, "Only this mutant (repeatable)");
  cmd->add_option("--cases-dir", args->cases_dir, "Write each mutant's first kill there as a divergence case");
  cmd->add_option("--json", args->json, "Write the kill matrix as JSON");
  cmd->add_flag("--progress", args->opt.progress, "A line per check on stderr");
  add_threads_option(cmd, args->threads);
  cmd->callback([args, &exit_code] {
    torch::set_num_threads(args->threads);
    mutants::KillOptions opt = args->opt;
    for (const auto& m : args->models) opt.models.emplace_back(m);
    opt.cases_dir = args->cases_dir;
    for (const auto& n : opt.only_mutants) mutants::find_mutant(n);  // InputError for an unknown name
    const mutants::KillMatrix km = mutants::run_kill_matrix(opt);
    fmt::print("{}", mutants::kill_matrix_text(km));
    for (const auto& m : km.mutants)
      if (!m.case_dir.empty()) fmt::print("first kill of {} written to {}\n", m.name, m.case_dir);
    if (!args->json.empty()) write_text_atomically(args->json, mutants::kill_matrix_json(km));
    exit_code = km.kill_rate() == 1.0 ? 0 : 1;
  });
}

}  // namespace mambadiff::cli
