// `fuzz`: a libFuzzer campaign over the targets of fuzz/ (harness/fuzz_campaign.h).
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <limits>

#include <fmt/format.h>

#include "cli/commands.h"
#include "engine/errors.h"
#include "engine/output_file.h"
#include "harness/fuzz_campaign.h"
#include "mutants/catalog.h"

namespace mambadiff::cli {
namespace {

std::atomic<bool> g_fuzz_interrupted{false};
extern "C" void on_fuzz_sigint(int) { g_fuzz_interrupted.store(true); }

// Exit code of a campaign that Ctrl-C ended without a finding (the shell's 128 + SIGINT).
constexpr int kInterruptedExit = 130;

// The differential targets a mutant can be found by, in the order the kill matrix runs them.
const std::vector<std::string> kDifferentialTargets = {"model_script", "scan_diff"};

struct KillRow {
  std::string mutant;
  bool found = false;
  std::string target, signature, first_divergence, case_dir;
  double time_s = 0;           // fuzzing wall time until the first crash input, all slices
  double cpu_s = 0;            // CPU time of the fuzzer processes until then (slices before, and the finding one whole)
  std::uint64_t execs = 0;     // executions until then
  int not_credited = 0;        // findings before it that the target without the mutant also made
};

// The fuzz kill matrix (issue 10 §7): for each mutant, MAMBADIFF_FUZZ_MUTANT=<name> and one job;
// the differential targets take turns in slices of `slice_s` wall seconds (each slice starts from
// the corpus the earlier ones merged, so no work is lost) until one finds it or the fuzzers have
// used `budget_s` CPU seconds.
std::vector<KillRow> run_kill_matrix(const FuzzCampaignOptions& base, const std::vector<std::string>& only,
                                     double slice_s, bool tty) {
  std::vector<KillRow> rows;
  for (const auto& m : mutants::mutant_catalog()) {
    if (!only.empty() && std::find(only.begin(), only.end(), m.name) == only.end()) continue;
    if (base.interrupted && base.interrupted->load()) break;
    KillRow row;
    row.mutant = m.name;
    ::setenv("MAMBADIFF_FUZZ_MUTANT", m.name.c_str(), 1);
    FuzzCampaignOptions o = base;
    o.out_dir = base.out_dir / m.name;
    std::error_code ec;
    std::filesystem::remove_all(o.out_dir, ec);  // every mutant starts from the seed corpus alone
    o.jobs = 1;
    o.stop_at_first_finding = true;
    o.minimize_s = 0;  // the time to find is the figure; the finding's case is written unminimized
    double spent = 0, cpu = 0;
    std::uint64_t execs = 0;
    // The budget is CPU time ("on one core": on a shared machine a wall second gives the fuzzer less);
    // wall time is capped at three budgets all the same.
    for (std::size_t turn = 0; !row.found && cpu < base.time_s - 0.5 && spent < 3 * base.time_s; ++turn) {
      if (base.interrupted && base.interrupted->load()) break;
      o.target = kDifferentialTargets[turn % kDifferentialTargets.size()];
      o.time_s = slice_s;
      const FuzzCampaignResult r = run_fuzz_campaign(o);
      const FuzzTargetStats& t = r.targets.at(0);
      if (t.first_finding_s && !r.findings.empty()) {
        const FuzzFinding& f = r.findings.front();
        // The finding is the mutant's only if the target without it runs the same input clean: a
        // divergence the product itself has (or a crash of the harness) would be credited to
        // whichever mutant was loaded.
        const auto clean = replay_fuzz_input(o.targets_dir / t.name, f.dir / "input", {"MAMBADIFF_FUZZ_MUTANT="},
                                             o.timeout_s);
        if (clean) {
          ++row.not_credited;
          fmt::print(stderr, "kill matrix: {}: not credited, the target without the mutant fails on that input too: {}\n",
                     m.name, clean->key());
        } else {
          row = {m.name, true, t.name, f.crash.signature, f.crash.first_divergence,
                 f.case_dir.empty() ? f.dir.string() : f.case_dir.string(), spent + *t.first_finding_s,
                 cpu + t.fuzz_cpu_s, execs + t.first_finding_execs.value_or(t.execs), row.not_credited};
        }
      }
      spent += t.fuzz_time_s;
      cpu += t.fuzz_cpu_s;
      execs += t.execs;
    }
    if (!row.found) {
      row.time_s = spent;
      row.cpu_s = cpu;
      row.execs = execs;
    }
    fmt::print(stderr, "{}kill matrix: {:<30} {:>5} in {:>6.1f} s ({:.1f} CPU s), {:>9} execs {} {}\n",
               tty ? "\r\033[K" : "", m.name, row.found ? "FOUND" : "alive", row.time_s, row.cpu_s, row.execs,
               row.target, row.signature);
    rows.push_back(row);
  }
  ::unsetenv("MAMBADIFF_FUZZ_MUTANT");
  return rows;
}

nlohmann::json kill_matrix_json(const std::vector<KillRow>& rows, double budget_s) {
  nlohmann::json list = nlohmann::json::array();
  std::vector<double> times;
  std::size_t found = 0;
  for (const auto& r : rows) {
    list.push_back({{"mutant", r.mutant}, {"found", r.found}, {"target", r.target}, {"time_s", r.time_s},
                    {"cpu_s", r.cpu_s}, {"execs", r.execs}, {"signature", r.signature}, {"first_divergence", r.first_divergence},
                    {"case", r.case_dir}, {"not_credited", r.not_credited}});
    found += r.found;
    times.push_back(r.found ? r.cpu_s : std::numeric_limits<double>::infinity());
  }
  std::sort(times.begin(), times.end());
  const double median = times.empty() ? 0
                        : times.size() % 2 ? times[times.size() / 2]
                                           : (times[times.size() / 2 - 1] + times[times.size() / 2]) / 2;
  return {{"format", "mambadiff.fuzz-kill-matrix.v1"}, {"budget_s", budget_s}, {"found", found},
          {"mutants", rows.size()}, {"median_cpu_s", std::isfinite(median) ? nlohmann::json(median) : nlohmann::json(nullptr)},
          {"rows", list}};
}

std::string kill_matrix_table(const std::vector<KillRow>& rows) {
  std::string s =
      "| mutant | found by | CPU s to find | wall s | executions | signature |\n|---|---|---:|---:|---:|---|\n";
  for (const auto& r : rows) {
    s += r.found ? fmt::format("| {} | {} | {:.1f} | {:.1f} | {} | `{}` |\n", r.mutant, r.target, r.cpu_s, r.time_s,
                               r.execs, r.signature)
                 : fmt::format("| {} | **not found** | > {:.0f} | > {:.0f} | {} | |\n", r.mutant, r.cpu_s, r.time_s,
                               r.execs);
  }
  return s;
}

}  // namespace

void add_fuzz_command(CLI::App& app, int& exit_code) {
  struct Args {
    double time_s = 0;
    int jobs = 0;
    std::string out, target, json, targets_dir, seeds_dir;
    double minimize_s = 10;
    bool stop_at_first = false;
    bool kill_matrix = false;
    std::vector<std::string> mutants;
    double slice_s = 30;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("fuzz", "Run a libFuzzer campaign over the fuzz targets (fork mode)");
  cmd->add_option("--time", a->time_s, "Fuzzing budget in seconds, shared by the targets")->required();
  cmd->add_option("--jobs", a->jobs, "Parallel fuzzing jobs (libFuzzer -fork=N)")->required();
  cmd->add_option("--out", a->out, "Output folder: corpus/<target>, findings/, summary.json")->required();
  cmd->add_option("--target", a->target, "Only this target (scan_diff, model_script, parse_safetensors, ...)");
  cmd->add_option("--json", a->json, "Also write the summary JSON here");
  cmd->add_option("--targets-dir", a->targets_dir, "Folder of the libFuzzer binaries (default: <repo>/build-fuzz/fuzz)");
  cmd->add_option("--seeds-dir", a->seeds_dir, "Seed corpora and dictionaries (default: <repo>/corpus/fuzz)");
  cmd->add_option("--minimize-time", a->minimize_s, "Seconds of -minimize_crash per finding (0: none)");
  cmd->add_flag("--stop-at-first-finding", a->stop_at_first,
                "Each target stops at its first crash input (the fuzz kill matrix's time-to-find)");
  cmd->add_flag("--kill-matrix", a->kill_matrix,
                "For each mutant of the catalog, one job until a differential target finds it (--time: the CPU-second "
                "budget per mutant); writes OUT/kill_matrix.json and prints the table");
  cmd->add_option("--mutant", a->mutants, "Kill matrix: only this mutant (repeatable)");
  cmd->add_option("--slice", a->slice_s, "Kill matrix: seconds per turn of a differential target");
  cmd->callback([a, &exit_code] {
    FuzzCampaignOptions o;
    o.time_s = a->time_s;
    o.jobs = a->jobs;
    o.out_dir = a->out;
    if (!a->target.empty()) o.target = a->target;
    o.targets_dir = a->targets_dir.empty() ? default_fuzz_targets_dir() : std::filesystem::path(a->targets_dir);
    o.seeds_dir = a->seeds_dir.empty() ? default_fuzz_seeds_dir() : std::filesystem::path(a->seeds_dir);
    if (!std::isfinite(a->minimize_s) || a->minimize_s < 0) {
      throw InputError(fmt::format("fuzz: --minimize-time {} is not a number of seconds >= 0", a->minimize_s));
    }
    o.minimize_s = a->minimize_s;
    o.stop_at_first_finding = a->stop_at_first;
    if (a->kill_matrix) {
      if (!a->target.empty()) throw InputError("fuzz: --kill-matrix runs the differential targets; drop --target");
      if (!std::isfinite(a->slice_s) || a->slice_s <= 0) {
        throw InputError(fmt::format("fuzz: --slice {} is not a positive number of seconds", a->slice_s));
      }
      for (const auto& m : a->mutants) mutants::find_mutant(m);  // InputError listing the catalog
      for (const auto& t : kDifferentialTargets) {
        o.target = t;
        validate_fuzz_campaign(o);
        // The matrix is defined from the seeds: without them every mutant would start from nothing,
        // and the first divergence the fuzzer met (the open tolerance class included) would count
        // as the kill (seen on an out-of-tree binary, whose default --seeds-dir does not exist).
        if (!std::filesystem::is_directory(o.seeds_dir / t)) {
          throw InputError(fmt::format("fuzz --kill-matrix: no seed corpus {} (every mutant starts from the seeds; "
                                       "pass --seeds-dir <repo>/corpus/fuzz)",
                                       (o.seeds_dir / t).string()));
        }
      }
      o.target.reset();
    } else {
      validate_fuzz_campaign(o);
    }

    // A terminal shows one live line, rewritten; a log gets a line every 10 s and one whenever
    // libFuzzer reports new crash inputs.
    const bool tty = ::isatty(STDERR_FILENO);
    auto last = std::chrono::steady_clock::now() - std::chrono::hours(1);
    o.on_progress = [tty, &last](bool new_crash, const std::string& line) {
      const auto now = std::chrono::steady_clock::now();
      if (tty) {
        fmt::print(stderr, "\r\033[K{}", line);
      } else if (new_crash || now - last >= std::chrono::seconds(10)) {
        fmt::print(stderr, "{}\n", line);
        last = now;
      }
    };
    g_fuzz_interrupted.store(false);
    o.interrupted = &g_fuzz_interrupted;
    auto previous = std::signal(SIGINT, on_fuzz_sigint);
    FuzzCampaignResult r;
    std::vector<KillRow> kill_rows;
    try {
      if (a->kill_matrix) {
        kill_rows = run_kill_matrix(o, a->mutants, a->slice_s, tty);
      } else {
        r = run_fuzz_campaign(o);
      }
    } catch (...) {
      std::signal(SIGINT, previous);
      throw;
    }
    std::signal(SIGINT, previous);
    if (tty) fmt::print(stderr, "\n");
    if (a->kill_matrix) {
      const auto j = kill_matrix_json(kill_rows, o.time_s);
      write_text_atomically(o.out_dir / "kill_matrix.json", j.dump(2) + "\n");
      if (!a->json.empty()) write_text_atomically(a->json, j.dump(2) + "\n");
      fmt::print("{}fuzz kill matrix: {}/{} found, median {} -> {}\n", kill_matrix_table(kill_rows), j["found"].get<int>(),
                 kill_rows.size(), j["median_cpu_s"].is_null() ? "n/a" : fmt::format("{:.1f} CPU s", j["median_cpu_s"].get<double>()),
                 (o.out_dir / "kill_matrix.json").string());
      const bool all = j["found"].get<std::size_t>() == kill_rows.size() && !kill_rows.empty();
      exit_code = all ? 0 : g_fuzz_interrupted.load() ? kInterruptedExit : 1;
      return;
    }
    const std::string json = fuzz_campaign_json(r, o).dump(2) + "\n";
    write_text_atomically(o.out_dir / "summary.json", json);
    if (!a->json.empty()) write_text_atomically(a->json, json);
    fmt::print("{}", fuzz_campaign_table(r));
    fmt::print("fuzz: {} finding{} -> {}\n", r.findings.size(), r.findings.size() == 1 ? "" : "s",
               (o.out_dir / "summary.json").string());
    exit_code = !r.findings.empty() ? 1 : r.interrupted ? kInterruptedExit : 0;
  });
}

}  // namespace mambadiff::cli
