#include "mutants/kill_matrix.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>

#include "engine/checkpoint.h"
#include "harness/check_suite.h"
#include "harness/divergence_case.h"
#include "harness/path_registry.h"
#include "mutants/catalog.h"

namespace mambadiff::mutants {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

}  // namespace

double KillMatrix::kill_rate() const {
  if (mutants.empty()) return 0.0;
  size_t killed = 0;
  for (const auto& m : mutants) killed += m.killed();
  return static_cast<double>(killed) / static_cast<double>(mutants.size());
}

KillMatrix run_kill_matrix(const KillOptions& opt) {
  const auto t0 = Clock::now();
  install_mutant_paths();
  KillMatrix km;
  km.seed = opt.seed;
  std::vector<const Mutant*> mutants;
  if (opt.only_mutants.empty()) {
    for (const auto& m : mutant_catalog()) mutants.push_back(&m);
  } else {
    for (const auto& n : opt.only_mutants) mutants.push_back(&find_mutant(n));
  }
  for (const Mutant* m : mutants) km.mutants.push_back({m->name, m->reproduces, {}, {}, -1.0, ""});
  std::vector<double> spent(mutants.size(), 0.0);  // each mutant's check time so far

  const auto models = opt.models.empty() ? default_models() : opt.models;
  for (const auto& model_dir : models) {
    const Mamba2Checkpoint ck = Mamba2Checkpoint::load(model_dir);
    const std::string model = model_dir.filename().string();
    for (const auto& [name, scenario] : check_scenarios(ck, model_dir, opt.seed)) {
      const std::string check = model + "/" + name;
      km.checks.push_back(check);
      // What every check run pays on this scenario whatever the mutant: the reference, the plain
      // baseline and the `chunked` path (the mutant's partner in check's pairs).
      const auto ts = Clock::now();
      const ReferenceRun ref = run_reference(scenario, ck);
      const ScenarioResult chunked = evaluate_path("chunked", scenario, ck);
      const double shared = since(ts);
      for (size_t i = 0; i < mutants.size(); ++i) {
        const Mutant& m = *mutants[i];
        MutantKills& mk = km.mutants[i];
        const auto tm = Clock::now();
        std::string how;
        CaseRun killing;
        bool compared = false;
        try {
          const ScenarioResult r = m.evaluate(scenario, ck);
          for (const auto* other : {&ref.reference, &chunked}) {
            const Comparison c = compare_results(r, *other, ref.reference, ref.baselines);
            if (c.agree) continue;
            how = fmt::format("vs {}: {}", other->path, describe(*c.first_divergence));
            killing = CaseRun{m.path_name(), other->path, r, *other, ref.reference, c, ref.baselines, TolerancePolicy{}};
            compared = true;
            break;
          }
        } catch (const std::exception& e) {
          // A check that errors where the reference runs fails too: the mutant is caught.
          how = fmt::format("raised: {}", e.what());
        }
        spent[i] += shared + since(tm);
        if (how.empty()) continue;
        if (!mk.killed()) {
          mk.seconds_to_first_kill = spent[i];
          if (!opt.cases_dir.empty() && compared) {
            const auto origin = fmt::format("mutants --seed {}: check {}", opt.seed, check);
            DivergenceCase c = make_case(scenario, ck, killing, TolerancePolicy{}, "diverge", origin);
            c.reproduces = m.reproduces;
            const auto dir = opt.cases_dir / case_dir_name(m.name);
            c.save(dir, &killing);
            mk.case_dir = dir.string();
          }
        }
        mk.killed_by.push_back(check);
        mk.how.push_back(how);
      }
      if (opt.progress) fmt::print(stderr, "mutants: {} done ({:.1f} s)\n", check, since(t0));
    }
  }
  km.seconds = since(t0);
  return km;
}

std::string kill_matrix_text(const KillMatrix& km) {
  std::string out;
  size_t killed = 0;
  for (const auto& m : km.mutants) killed += m.killed();
  out += fmt::format("mutants: {} of {} killed (kill rate {:.2f}) by check's matrix, seed {}, in {:.1f} s\n\n", killed,
                     km.mutants.size(), km.kill_rate(), km.seed, km.seconds);
  out += fmt::format("{:>3} {:<29} {:>7} {:>10}  {}\n", "#", "mutant", "kills", "1st kill", "first killed by");
  for (size_t i = 0; i < km.mutants.size(); ++i) {
    const auto& m = km.mutants[i];
    out += fmt::format("{:>3} {:<29} {:>3}/{:<3} {:>10}  {}\n", i + 1, m.name, m.killed_by.size(), km.checks.size(),
                       m.killed() ? fmt::format("{:.2f} s", m.seconds_to_first_kill) : "SURVIVED",
                       m.killed() ? m.killed_by.front() + " (" + m.how.front() + ")" : "-");
  }
  out += "\nreproduces:\n";
  for (size_t i = 0; i < km.mutants.size(); ++i) out += fmt::format("{:>3} {}\n", i + 1, km.mutants[i].reproduces);
  // The grid: one row per check, one column per mutant (numbered as above); 'x' = killed there.
  out += fmt::format("\n{:<28}", "check \\ mutant");
  for (size_t i = 0; i < km.mutants.size(); ++i) out += fmt::format("{:>3}", i + 1);
  out += "\n";
  for (const auto& check : km.checks) {
    out += fmt::format("{:<28}", check);
    for (const auto& m : km.mutants) {
      const bool hit = std::find(m.killed_by.begin(), m.killed_by.end(), check) != m.killed_by.end();
      out += fmt::format("{:>3}", hit ? "x" : ".");
    }
    out += "\n";
  }
  return out;
}

std::string kill_matrix_json(const KillMatrix& km) {
  nlohmann::json mutants = nlohmann::json::array();
  for (const auto& m : km.mutants) {
    nlohmann::json j = {{"name", m.name},
                        {"reproduces", m.reproduces},
                        {"killed_by", m.killed_by},
                        {"how", m.how},
                        {"seconds_to_first_kill", m.killed() ? nlohmann::json(m.seconds_to_first_kill) : nlohmann::json(nullptr)}};
    if (!m.case_dir.empty()) j["case"] = m.case_dir;
    mutants.push_back(j);
  }
  const nlohmann::json j = {{"mutants", mutants}, {"kill_rate", km.kill_rate()}, {"checks", km.checks},
                            {"seed", km.seed}, {"seconds", km.seconds}};
  return j.dump(1) + "\n";
}

}  // namespace mambadiff::mutants
