#include "harness/check_suite.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "engine/errors.h"
#include "harness/corpus_location.h"
#include "engine/input_file.h"
#include "engine/output_file.h"
#include "harness/divergence_case.h"
#include "harness/divergence_map.h"
#include "harness/path_registry.h"

namespace mambadiff {

bool CheckReport::all_agree() const {
  return std::none_of(cases.begin(), cases.end(),
                      [](const CheckCase& c) { return c.verdict == "diverge" || c.verdict == "error"; });
}

std::vector<std::filesystem::path> default_models() {
  const char* env = std::getenv("MAMBADIFF_MODELS");
  const std::filesystem::path root = env ? env : corpus_dir() / "models";
  std::vector<std::filesystem::path> out;
  if (std::filesystem::is_directory(root)) {
    for (const auto& e : std::filesystem::directory_iterator(root))
      if (std::filesystem::exists(e.path() / "config.json")) out.push_back(e.path());
  }
  if (out.empty()) throw InputError(fmt::format("{}: no embedded models found", root.string()));
  std::sort(out.begin(), out.end());
  return out;
}

namespace {

// Deterministic token rows: row b differs from row b' (each row its own stream).
torch::Tensor random_tokens(std::mt19937_64& rng, int64_t batch, int64_t length, int64_t vocab) {
  torch::Tensor t = torch::empty({batch, length}, torch::kInt64);
  auto* p = t.data_ptr<int64_t>();
  for (int64_t i = 0; i < batch * length; ++i) p[i] = static_cast<int64_t>(rng() % static_cast<uint64_t>(vocab));
  return t;
}

ScenarioOp forward_op(const torch::Tensor& tokens) {
  ScenarioOp op;
  op.kind = OpKind::kForward;
  op.tokens = tokens;
  return op;
}

ScenarioOp named_op(OpKind kind, const std::string& name = "") {
  ScenarioOp op;
  op.kind = kind;
  op.name = name;
  return op;
}

ScenarioOp inject_op(int64_t layer, const torch::Tensor& delta) {
  ScenarioOp op;
  op.kind = OpKind::kInject;
  op.layer = layer;
  op.delta = delta;
  return op;
}

uint64_t case_seed(uint64_t base, const std::string& model, const std::string& scenario) {
  const std::string key = model + "/" + scenario;
  return fnv1a64(key.data(), key.size(), base) & 0x7fffffffffffULL;
}

}  // namespace

std::vector<std::pair<std::string, Scenario>> check_scenarios(const Mamba2Checkpoint& ck,
                                                              const std::filesystem::path& model_dir, uint64_t seed) {
  const auto& c = ck.config;
  const int64_t Q = c.chunk_size, V = c.vocab_size, B = 2;  // batch 2: rows with different sequences
  const std::string model = model_dir.filename().string();
  std::vector<std::pair<std::string, Scenario>> out;
  auto add = [&](const std::string& name, torch::ScalarType dtype, auto&& build) {
    Scenario s;
    s.model_dir = model_dir;
    s.model = model_dir.string();
    s.dtype = dtype;
    s.file = fmt::format("check/{}/{}.json", model, name);
    std::mt19937_64 rng(case_seed(seed, model, name));
    torch::manual_seed(case_seed(seed, model, name));
    build(s, rng);
    out.emplace_back(name, std::move(s));
  };
  // Prefill lengths around chunk boundaries (HF #34817 appeared once L > chunk_size).
  for (int64_t L : {int64_t{1}, Q - 1, Q, Q + 1, 3 * Q + 5}) {
    if (L < 1) continue;
    add(fmt::format("prefill_{}", L), torch::kFloat32,
        [&](Scenario& s, std::mt19937_64& rng) { s.ops.push_back(forward_op(random_tokens(rng, B, L, V))); });
  }
  auto decode = [&](Scenario& s, std::mt19937_64& rng) {
    s.ops.push_back(forward_op(random_tokens(rng, B, 5, V)));
    for (int i = 0; i < 6; ++i) s.ops.push_back(forward_op(random_tokens(rng, B, 1, V)));
  };
  add("decode", torch::kFloat32, decode);
  add("continue", torch::kFloat32, [&](Scenario& s, std::mt19937_64& rng) {
    s.ops.push_back(forward_op(random_tokens(rng, B, 9, V)));
    s.ops.push_back(forward_op(random_tokens(rng, B, Q + 3, V)));
    s.ops.push_back(forward_op(random_tokens(rng, B, 2, V)));
  });
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    add(fmt::format("inject_layer{}", l), torch::kFloat32, [&](Scenario& s, std::mt19937_64& rng) {
      s.ops.push_back(forward_op(random_tokens(rng, B, 6, V)));
      s.ops.push_back(inject_op(l, 0.5 * torch::randn({B, c.num_heads, c.head_dim, c.state_size})));
      s.ops.push_back(forward_op(random_tokens(rng, B, 1, V)));
      s.ops.push_back(inject_op(l, 0.5 * torch::randn({c.num_heads, c.head_dim, c.state_size})));
      s.ops.push_back(forward_op(random_tokens(rng, B, 3, V)));
    });
  }
  add("snapshot_restore", torch::kFloat32, [&](Scenario& s, std::mt19937_64& rng) {
    s.ops.push_back(forward_op(random_tokens(rng, B, 7, V)));
    s.ops.push_back(named_op(OpKind::kSnapshot, "s0"));
    s.ops.push_back(forward_op(random_tokens(rng, B, 3, V)));
    s.ops.push_back(inject_op(0, torch::randn({B, c.num_heads, c.head_dim, c.state_size})));
    s.ops.push_back(named_op(OpKind::kRestore, "s0"));
    s.ops.push_back(forward_op(random_tokens(rng, B, 1, V)));
    s.ops.push_back(forward_op(random_tokens(rng, B, 2, V)));
    s.ops.push_back(named_op(OpKind::kReset));
    s.ops.push_back(forward_op(random_tokens(rng, B, 4, V)));
  });
  add(fmt::format("bf16_prefill_{}", 3 * Q + 5), torch::kBFloat16,
      [&](Scenario& s, std::mt19937_64& rng) { s.ops.push_back(forward_op(random_tokens(rng, B, 3 * Q + 5, V))); });
  add("bf16_decode", torch::kBFloat16, decode);
  // float16, the same two: fp16 models run on mamba_ssm's and vLLM's kernels (fp16 storage, fp32
  // sums and state), bounded by the fp16 loops (oracles/reference_path.h).
  add(fmt::format("fp16_prefill_{}", 3 * Q + 5), torch::kFloat16,
      [&](Scenario& s, std::mt19937_64& rng) { s.ops.push_back(forward_op(random_tokens(rng, B, 3 * Q + 5, V))); });
  add("fp16_decode", torch::kFloat16, decode);
  return out;
}

namespace {

// A text file the exporter left instead of an export (DIR/<model>/<scenario>.skipped or .error):
// its first line, cut for a message.
std::string marker_line(const std::filesystem::path& file) {
  std::ifstream in(file);
  std::string line;
  std::getline(in, line);
  return truncate_for_message(line.empty() ? "(empty)" : line);
}

// An external system's export of one case, read as a `file:` result. InputError (exit 2) naming
// the file when it is not an export of this scenario (tensor shapes) or of this matrix (its
// "check_seed" metadata, when present, must be the run's seed).
ScenarioResult read_external(const std::filesystem::path& file, const Scenario& scenario, int64_t vocab_size,
                             uint64_t seed) {
  ScenarioResult r = read_result_file(file, scenario, vocab_size);
  const auto it = r.metadata.find("check_seed");
  if (it != r.metadata.end() && it->second != std::to_string(seed)) {
    throw InputError(fmt::format("{}: metadata 'check_seed' is {} but check runs with --seed {} (export the "
                                 "scenarios of this seed: check --emit-scenarios DIR --seed {})",
                                 file.string(), truncate_for_message(it->second), seed, seed));
  }
  return r;
}

}  // namespace

std::string scenario_class(const std::string& name) {
  std::string s = name.rfind("bf16_", 0) == 0 || name.rfind("fp16_", 0) == 0 ? name.substr(5) : name;
  while (!s.empty() && std::isdigit(static_cast<unsigned char>(s.back()))) s.pop_back();
  if (!s.empty() && s.back() == '_') s.pop_back();
  if (s.size() > 6 && s.compare(s.size() - 6, 6, "_layer") == 0) s.resize(s.size() - 6);
  return s;
}

std::pair<std::string, std::filesystem::path> parse_external_option(const std::string& spec) {
  const auto eq = spec.find('=');
  const std::string name = eq == std::string::npos ? "" : spec.substr(0, eq);
  const bool plain = !name.empty() && std::all_of(name.begin(), name.end(), [](char ch) {
    return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '-' || ch == '.';
  });
  if (!plain) {
    throw InputError(fmt::format("--external '{}': expected NAME=DIR with NAME of letters, digits, '_', '-', '.'",
                                 truncate_for_message(spec)));
  }
  const std::filesystem::path dir = spec.substr(eq + 1);
  if (!std::filesystem::is_directory(dir)) {
    throw InputError(fmt::format("--external '{}': '{}' is not a directory", truncate_for_message(spec),
                                 truncate_for_message(dir.string())));
  }
  return {name, dir};
}

bool CheckOptions::selects(const std::string& name, const Scenario& scenario) const {
  if (!only_scenario.empty() && name.find(only_scenario) == std::string::npos) return false;
  return dtypes.empty() || std::find(dtypes.begin(), dtypes.end(), scenario.dtype) != dtypes.end();
}

namespace {

// The --scenario / --dtypes filters matched nothing: a usage error, never "0 cases, all agree".
InputError nothing_selected(const CheckOptions& opt) {
  std::vector<std::string> names;
  for (const auto d : opt.dtypes) names.push_back(dtype_string(d));
  const std::string dtypes = fmt::format("--dtypes {}", fmt::join(names, ","));
  if (opt.only_scenario.empty()) return InputError(fmt::format("check: {} matches no scenario of the matrix", dtypes));
  return InputError(fmt::format("check: --scenario '{}'{} matches no scenario of the matrix",
                                truncate_for_message(opt.only_scenario), names.empty() ? "" : " with " + dtypes));
}

}  // namespace

size_t emit_check_scenarios(const CheckOptions& opt, const std::filesystem::path& dir) {
  const auto models = opt.models.empty() ? default_models() : opt.models;
  nlohmann::ordered_json cases = nlohmann::ordered_json::array();
  for (const auto& model_dir : models) {
    const Mamba2Checkpoint ck = Mamba2Checkpoint::load(model_dir);
    const std::string model = model_dir.filename().string();
    for (auto& [name, scenario] : check_scenarios(ck, model_dir, opt.seed)) {
      if (!opt.selects(name, scenario)) continue;
      const std::filesystem::path rel = std::filesystem::path(model) / (name + ".json");
      std::filesystem::create_directories(dir / model);
      scenario.file = dir / rel;
      scenario.save(dir / rel);
      cases.push_back({{"id", model + "/" + name},
                       {"model", model},
                       {"model_dir", std::filesystem::absolute(model_dir).lexically_normal().string()},
                       {"scenario", name},
                       {"class", scenario_class(name)},
                       {"file", rel.string()},
                       {"export", (std::filesystem::path(model) / (name + ".safetensors")).string()},
                       {"dtype", dtype_string(scenario.dtype)},
                       {"seed", case_seed(opt.seed, model, name)}});
    }
  }
  if (cases.empty()) throw nothing_selected(opt);
  const nlohmann::ordered_json manifest = {
      {"format", "mambadiff.check-matrix.v1"}, {"seed", opt.seed}, {"cases", cases}};
  write_text_atomically(dir / "manifest.json", manifest.dump(1) + "\n");
  return cases.size();
}

CheckReport run_check(const CheckOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  CheckReport report;
  const auto models = opt.models.empty() ? default_models() : opt.models;
  const bool external = !opt.externals.empty();
  std::vector<std::string> paths = opt.paths;
  if (external) {
    // Each external system is compared with the oracle only: its exports are the path under test.
    if (!paths.empty()) throw InputError("check: --external and --paths exclude each other (externals are compared with reference)");
    paths = {oracle_path()};
  } else if (paths.empty()) {
    for (const auto& p : registered_paths())
      if (path_role(p) != PathRole::kBaseline) paths.push_back(p);
  }
  // Nothing checked is not a pass: fewer than two paths, a --scenario that matches nothing and a
  // matrix whose every pair was skipped are usage errors, not "0 cases, all agree".
  if (!external && paths.size() < 2) {
    throw InputError(fmt::format("check: --paths needs at least two paths to compare, got {}", paths.size()));
  }
  bool any_scenario = false;
  std::string last_skip;
  for (const auto& model_dir : models) {
    const Mamba2Checkpoint ck = Mamba2Checkpoint::load(model_dir);
    const std::string model = model_dir.filename().string();
    for (const auto& [name, scenario] : check_scenarios(ck, model_dir, opt.seed)) {
      if (!opt.selects(name, scenario)) continue;
      any_scenario = true;
      const uint64_t seed = case_seed(opt.seed, model, name);
      const std::string dtype = dtype_string(scenario.dtype);
      const ReferenceRun reference = run_reference(scenario, ck);
      const ScenarioResult& ref = reference.reference;
      const std::vector<ErrorBaseline>& baselines = reference.baselines;
      std::map<std::string, ScenarioResult> results;
      std::map<std::string, std::string> skipped, failed;
      for (const auto& p : paths) {
        std::string why;
        if (is_oracle(p)) {
          results.emplace(p, ref);
        } else if (!path_available(p, scenario.dtype, &why)) {
          skipped[p] = why;
        } else {
          // A path that throws on a valid scenario (a kernel error, an illegal access) is a failed
          // case with its message, not the end of the suite.
          try {
            results.emplace(p, evaluate_path(p, scenario, ck));
          } catch (const InputError&) {
            throw;
          } catch (const std::exception& e) {
            failed[p] = first_line(e);
          }
        }
      }
      // The pairs compared: every pair of paths, or (reference, NAME) for each external system,
      // whose result is its export file for this case.
      struct Pair {
        std::string a, b;            // names as in `paths` / `results` (an external: its file: path)
        std::string label_a, label_b;  // as printed in the report (an external: its NAME)
      };
      std::vector<Pair> pairs;
      if (external) {
        for (const auto& [ext_name, dir] : opt.externals) {
          const auto stem = dir / model / name;
          const auto file = std::filesystem::path(stem.string() + ".safetensors");
          const std::string file_name = file_path_name(file);
          if (std::filesystem::exists(file)) {
            results.emplace(file_name, read_external(file, scenario, ck.config.vocab_size, opt.seed));
          } else if (std::filesystem::exists(stem.string() + ".error")) {
            failed[file_name] = marker_line(stem.string() + ".error");
          } else if (std::filesystem::exists(stem.string() + ".skipped")) {
            skipped[file_name] = marker_line(stem.string() + ".skipped");
          } else {
            skipped[file_name] = fmt::format("no export {} (the exporter wrote none)", file.string());
          }
          pairs.push_back({paths[0], file_name, paths[0], ext_name});
        }
      } else {
        for (size_t i = 0; i < paths.size(); ++i)
          for (size_t j = i + 1; j < paths.size(); ++j) pairs.push_back({paths[i], paths[j], paths[i], paths[j]});
      }
      for (const Pair& pair : pairs) {
        CheckCase cc{model, name, pair.label_a + "," + pair.label_b, dtype, 0, 0, 0, "", seed, "", "", ""};
        const auto skip_a = skipped.find(pair.a), skip_b = skipped.find(pair.b);
        const auto fail_a = failed.find(pair.a), fail_b = failed.find(pair.b);
        if (fail_a != failed.end() || fail_b != failed.end()) {
          const bool a_failed = fail_a != failed.end();
          cc.verdict = "error";
          cc.detail = (a_failed ? pair.label_a : pair.label_b) + " failed: " + (a_failed ? fail_a : fail_b)->second;
        } else if (skip_a != skipped.end() || skip_b != skipped.end()) {
          const bool a_skipped = skip_a != skipped.end();
          cc.verdict = "skipped";
          cc.detail = (a_skipped ? pair.label_a : pair.label_b) + ": " + (a_skipped ? skip_a : skip_b)->second;
          last_skip = cc.detail;
        } else {
          const Comparison cmp = compare_results(results.at(pair.a), results.at(pair.b), ref, baselines);
          cc.error = cmp.logits_error;
          cc.tolerance = cmp.logits_tolerance;
          cc.nmse = cmp.logits_nmse;
          cc.verdict = cmp.agree ? "agree" : "diverge";
          if (cmp.first_divergence) cc.detail = describe(*cmp.first_divergence);
          if (!cmp.agree && (!opt.cases_dir.empty() || !opt.maps_dir.empty())) {
            const CaseRun run{pair.a, pair.b, results.at(pair.a), results.at(pair.b), ref, cmp,
                              baselines, TolerancePolicy{}};
            const std::string file_name =
                case_dir_name(fmt::format("{}.{}.{}.{}", model, name, pair.label_a, pair.label_b));
            if (!opt.cases_dir.empty()) {
              const auto origin = fmt::format("check --seed {}: model {}, scenario {} (case seed {})", opt.seed,
                                              model, name, seed);
              const auto dir = opt.cases_dir / file_name;
              make_case(scenario, ck, run, TolerancePolicy{}, "agree", origin).save(dir, &run);
              cc.case_dir = dir.string();
            }
            if (!opt.maps_dir.empty()) {
              DivergenceMapContext ctx;
              ctx.title = fmt::format("check: {} / {}: {} vs {} ({})", model, name, pair.label_a, pair.label_b, dtype);
              std::string external_dir;
              for (const auto& [ext_name, dir] : opt.externals)
                if (ext_name == pair.label_b) external_dir = dir.string();
              ctx.command = external ? fmt::format("mambadiff check --model {} --scenario {} --external {}={} --seed {}",
                                                   model_dir.string(), name, pair.label_b, external_dir, opt.seed)
                                     : fmt::format("mambadiff check --model {} --scenario {} --paths {},{} --seed {}",
                                                   model_dir.string(), name, pair.a, pair.b, opt.seed);
              if (!cc.case_dir.empty()) ctx.command += "\nmambadiff repro " + cc.case_dir;
              ctx.scenario = fmt::format("check's matrix: {} (case seed {})", name, seed);
              ctx.model = model_dir.string();
              std::error_code ec;  // made at the first divergence: a passing run leaves no empty folder
              std::filesystem::create_directories(opt.maps_dir, ec);
              if (!std::filesystem::is_directory(opt.maps_dir)) {
                throw InputError(fmt::format("{}: cannot create the folder for the divergence maps{}",
                                             opt.maps_dir.string(), ec ? ": " + ec.message() : ""));
              }
              const auto file = opt.maps_dir / (file_name + ".html");
              write_divergence_map(file, scenario, run, ctx);
              cc.map_file = file.string();
            }
          }
        }
        report.cases.push_back(cc);
        if (!opt.quiet) {
          fmt::print("{:<10} {:<18} {:<24} {:<9} {:>10.3g} {:>10.3g} {:<8} {}{}\n", cc.model, cc.scenario, cc.paths,
                     cc.dtype, cc.error, cc.tolerance, cc.verdict, cc.seed, cc.detail.empty() ? "" : "  " + cc.detail);
          if (!cc.case_dir.empty()) fmt::print("  divergence case written to {}\n", cc.case_dir);
          std::fflush(stdout);
        }
      }
    }
  }
  if (!any_scenario) throw nothing_selected(opt);
  if (std::all_of(report.cases.begin(), report.cases.end(), [](const CheckCase& c) { return c.verdict == "skipped"; })) {
    throw InputError(fmt::format("check: nothing was compared: every path pair was skipped ({})", last_skip));
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return report;
}

void print_check_table(const CheckReport& r) {
  size_t agree = 0, diverge = 0, errors = 0, skipped = 0;
  for (const auto& c : r.cases) {
    agree += c.verdict == "agree";
    diverge += c.verdict == "diverge";
    errors += c.verdict == "error";
    skipped += c.verdict == "skipped";
  }
  fmt::print("check: {} cases: {} agree, {} diverge, {}{} skipped in {:.1f} s\n", r.cases.size(), agree, diverge,
             errors ? fmt::format("{} error, ", errors) : "", skipped, r.seconds);
}

void write_check_json(const CheckReport& r, const std::filesystem::path& file) {
  nlohmann::json cases = nlohmann::json::array();
  for (const auto& c : r.cases) {
    cases.push_back({{"model", c.model}, {"scenario", c.scenario}, {"paths", c.paths}, {"dtype", c.dtype},
                     {"error", c.error}, {"tolerance", c.tolerance}, {"nmse", c.nmse}, {"verdict", c.verdict},
                     {"seed", c.seed}, {"detail", c.detail}});
  }
  const nlohmann::json j = {{"verdict", r.all_agree() ? "agree" : "diverge"}, {"seconds", r.seconds}, {"cases", cases}};
  write_text_atomically(file, j.dump(1) + "\n");
}

namespace {
std::string xml_escape(const std::string& s) {
  std::string o;
  for (char ch : s) {
    switch (ch) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      default: o += ch;
    }
  }
  return o;
}
}  // namespace

void write_check_junit(const CheckReport& r, const std::filesystem::path& file) {
  size_t failures = 0, skipped = 0;
  for (const auto& c : r.cases) {
    failures += c.verdict == "diverge" || c.verdict == "error";
    skipped += c.verdict == "skipped";
  }
  std::string x = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  x += fmt::format("<testsuite name=\"mambadiff.check\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{:.3f}\">\n",
                   r.cases.size(), failures, skipped, r.seconds);
  for (const auto& c : r.cases) {
    x += fmt::format("  <testcase classname=\"{}\" name=\"{}[{}]\">\n", xml_escape(c.model),
                     xml_escape(c.scenario), xml_escape(c.paths + "," + c.dtype));
    x += fmt::format(
        "    <properties><property name=\"error\" value=\"{:.6g}\"/><property name=\"tolerance\" value=\"{:.6g}\"/>"
        "<property name=\"seed\" value=\"{}\"/></properties>\n",
        c.error, c.tolerance, c.seed);
    if (c.verdict == "diverge" || c.verdict == "error") {
      x += fmt::format("    <failure message=\"{}\"/>\n", xml_escape(c.detail));
    }
    if (c.verdict == "skipped") x += fmt::format("    <skipped message=\"{}\"/>\n", xml_escape(c.detail));
    x += "  </testcase>\n";
  }
  x += "</testsuite>\n";
  write_text_atomically(file, x);
}

}  // namespace mambadiff
