#include "harness/divergence_case.h"

#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/errors.h"
#include "engine/input_file.h"
#include "engine/output_file.h"
#include "engine/safetensors.h"
#include "engine/tensor_bytes.h"
#include "harness/path_registry.h"
#include "harness/tolerance_baseline.h"

namespace mambadiff {

namespace fs = std::filesystem;

namespace {

constexpr const char* kCaseFile = "case.json";
constexpr const char* kScenarioFile = "scenario.json";
constexpr const char* kObservedFile = "observed.safetensors";

bool numeric_tensor(const std::string& tensor) {
  return tensor == "logits" || tensor == "layer_output" || tensor == "cache.ssm_states" ||
         tensor == "cache.conv_states";
}

// JSON has no infinity: a non-finite error is written as the string "Infinity" / "NaN", which
// json_to_double (engine/config.h) reads back.
nlohmann::ordered_json number(double v) {
  if (std::isfinite(v)) return v;
  return std::isnan(v) ? "NaN" : (v > 0 ? "Infinity" : "-Infinity");
}

nlohmann::ordered_json index_or_null(int64_t v) { return v < 0 ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(v); }

template <typename T>
T require(const nlohmann::json& j, const char* key, const std::string& where) {
  if (!j.is_object() || !j.contains(key)) throw InputError(fmt::format("{}: missing key '{}'", where, key));
  const nlohmann::json& v = j.at(key);
  // nlohmann converts 1.5 to the integer 1 silently: an integer key must hold an integer.
  if (std::is_integral_v<T> && !v.is_number_integer()) {
    throw InputError(fmt::format("{}: key '{}' must be an integer, got {}", where, key, quote_json(v)));
  }
  try {
    return v.get<T>();
  } catch (const nlohmann::json::exception&) {
    throw InputError(fmt::format("{}: key '{}' has the wrong type: {}", where, key, quote_json(v)));
  }
}

std::string optional_string(const nlohmann::json& j, const char* key, const std::string& where) {
  return j.contains(key) ? require<std::string>(j, key, where) : std::string();
}

int64_t optional_index(const nlohmann::json& j, const char* key, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return -1;
  if (!j[key].is_number_integer()) throw InputError(fmt::format("{}: key '{}' must be an integer or null", where, key));
  return j[key].get<int64_t>();
}

std::string verdict_of(const nlohmann::json& j, const char* key, const std::string& where) {
  const auto v = require<std::string>(j, key, where);
  if (v != "diverge" && v != "agree") {
    throw InputError(fmt::format("{}: key '{}': '{}' is neither \"diverge\" nor \"agree\"", where, key, truncate_for_message(v)));
  }
  return v;
}

// The tensor at the divergence in one result: [B, T, V] logits, [B, T, D] layer output, or one
// layer's cache state; undefined when the divergence is not a tensor (dispatch, seqlen_offset).
torch::Tensor tensor_at(const ScenarioResult& r, const Divergence& d) {
  if (d.op >= r.ops.size()) return {};
  const OpResult& op = r.ops[d.op];
  const auto layer = static_cast<size_t>(d.layer);
  if (d.tensor == "logits") return op.logits;
  if (d.tensor == "layer_output" && d.layer >= 0 && layer < op.layer_outputs.size()) return op.layer_outputs[layer];
  const CacheState& c = op.cache.defined() ? op.cache : r.final_cache;
  if (d.tensor == "cache.ssm_states" && d.layer >= 0 && layer < c.ssm_states.size()) return c.ssm_states[layer];
  if (d.tensor == "cache.conv_states" && d.layer >= 0 && layer < c.conv_states.size()) return c.conv_states[layer];
  return {};
}

// "file:X" with X relative to `base` (unless absolute); other names unchanged.
std::string resolve_file_path(const std::string& name, const fs::path& base) {
  if (!is_file_path(name)) return name;
  const fs::path p = file_path_target(name);
  return file_path_name(p.is_absolute() ? p : base / p);
}

}  // namespace

std::string divergence_class(const Comparison& c) {
  if (c.agree || !c.first_divergence) return "";
  const Divergence& d = *c.first_divergence;
  return numeric_tensor(d.tensor) && !std::isfinite(d.error) ? d.tensor + "+nonfinite" : d.tensor;
}

std::string case_dir_name(const std::string& text) {
  std::string out;
  for (char ch : text) out += (std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_' || ch == '.') ? ch : '_';
  return out;
}

ReferenceRun run_reference(const Scenario& scenario, const Mamba2Checkpoint& ck, bool stochastic) {
  ReferenceRun r;
  r.reference = evaluate_path(oracle_path(), scenario, ck);
  // bf16 and fp16 runs are bounded by their own loops, others by fp32's: a deterministic run and stochastically
  // rounded ones (harness/tolerance_baseline.h).
  r.baselines = {stochastic ? derive_baseline(scenario, ck, r.reference) : plain_baseline(scenario, ck, r.reference)};
  return r;
}

CaseRun run_paths(const Scenario& scenario, const Mamba2Checkpoint& ck, const std::string& path_a,
                  const std::string& path_b, const TolerancePolicy& policy) {
  CaseRun run;
  ReferenceRun ref = run_reference(scenario, ck);
  run.reference = std::move(ref.reference);
  const std::vector<ErrorBaseline>& baselines = ref.baselines;
  run.a = is_oracle(path_a) ? run.reference : evaluate_path(path_a, scenario, ck);
  run.b = is_oracle(path_b) ? run.reference : evaluate_path(path_b, scenario, ck);
  run.comparison = compare_results(run.a, run.b, run.reference, baselines, policy);
  run.path_a = path_a;
  run.path_b = path_b;
  run.baselines = baselines;
  run.policy = policy;
  return run;
}

nlohmann::ordered_json observation_json(const Comparison& c) {
  nlohmann::ordered_json first = nullptr;
  if (c.first_divergence) {
    const Divergence& d = *c.first_divergence;
    first = {{"op", d.op},
             {"batch", index_or_null(d.batch)},
             {"token", index_or_null(d.token)},
             {"layer", index_or_null(d.layer)},
             {"tensor", d.tensor},
             {"error", number(d.error)},
             {"tolerance", number(d.tolerance)},
             {"detail", d.detail}};
  }
  return {{"verdict", c.agree ? "agree" : "diverge"},
          {"class", divergence_class(c)},
          {"logits_error", number(c.logits_error)},
          {"logits_tolerance", number(c.logits_tolerance)},
          {"logits_nmse", number(c.logits_nmse)},
          {"first_divergence", first}};
}

DivergenceCase DivergenceCase::load(const fs::path& where) {
  const fs::path file = fs::is_directory(where) ? where / kCaseFile : where;
  if (fs::is_directory(where) && !fs::exists(file)) {
    throw InputError(fmt::format("{}: not a divergence case (no {})", where.string(), kCaseFile));
  }
  const nlohmann::json j = read_input_json(file);
  return with_json_errors(file.string(), [&] { return from_json(j, file); });
}

DivergenceCase DivergenceCase::from_json(const nlohmann::json& j, const fs::path& file) {
  const std::string src = file.string();
  if (!j.is_object()) throw InputError(fmt::format("{}: a divergence case is a JSON object", src));
  const auto format = require<std::string>(j, "format", src);
  if (format != kCaseFormat) throw InputError(fmt::format("{}: key 'format': '{}' is not '{}'", src, truncate_for_message(format), kCaseFormat));

  DivergenceCase c;
  c.dir = file.parent_path();
  c.reproduces = optional_string(j, "reproduces", src);
  c.origin = optional_string(j, "origin", src);
  const auto scenario_file = require<std::string>(j, "scenario", src);
  c.scenario = Scenario::load(c.dir / scenario_file);
  c.model_layers = require<int64_t>(j, "model_layers", src);
  if (c.model_layers < 1) throw InputError(fmt::format("{}: key 'model_layers': {} is not >= 1", src, c.model_layers));

  if (!j.contains("paths") || !j["paths"].is_array() || j["paths"].size() != 2 || !j["paths"][0].is_string() ||
      !j["paths"][1].is_string()) {
    throw InputError(fmt::format("{}: key 'paths' must be an array of two path names", src));
  }
  c.path_a = resolve_file_path(j["paths"][0].get<std::string>(), c.dir);
  c.path_b = resolve_file_path(j["paths"][1].get<std::string>(), c.dir);

  if (!j.contains("tolerance") || !j["tolerance"].is_object()) {
    throw InputError(fmt::format("{}: missing key 'tolerance' (an object)", src));
  }
  const auto& t = j["tolerance"];
  const std::string tsrc = src + ": tolerance";
  // A NaN tolerance compares false with every error (so everything would "agree"); a negative
  // or infinite one means nothing either.
  auto read_bound = [&](const char* key, double* field, bool required) {
    if (!t.contains(key)) {
      if (required) throw InputError(fmt::format("{}: missing key '{}'", tsrc, key));
      return;
    }
    *field = json_to_double(t[key], tsrc, key);
    if (!std::isfinite(*field) || *field < 0) {
      throw InputError(fmt::format("{}: key '{}': {} is not a finite number >= 0", tsrc, key, *field));
    }
  };
  read_bound("multiplier", &c.tolerance.multiplier, true);
  read_bound("floor_float32", &c.tolerance.floor_float32, true);
  read_bound("floor_bfloat16", &c.tolerance.floor_bfloat16, true);
  read_bound("floor_float16", &c.tolerance.floor_float16, true);
  // Optional: cases recorded before the stochastic baselines (harness/tolerance_baseline.h) replay
  // under the policy they were recorded with, the plain loops' error alone.
  c.tolerance.stochastic_multiplier = 0.0;
  c.tolerance.stochastic_multiplier_bfloat16 = 0.0;
  c.tolerance.stochastic_multiplier_float16 = 0.0;
  read_bound("stochastic_multiplier", &c.tolerance.stochastic_multiplier, false);
  read_bound("stochastic_multiplier_bfloat16", &c.tolerance.stochastic_multiplier_bfloat16, false);
  read_bound("stochastic_multiplier_float16", &c.tolerance.stochastic_multiplier_float16, false);
  c.expected = verdict_of(j, "expected", src);

  if (j.contains("observed") && j["observed"].is_object()) {
    const auto& o = j["observed"];
    const std::string osrc = src + ": observed";
    c.observed_verdict = verdict_of(o, "verdict", osrc);
    c.observed_class = optional_string(o, "class", osrc);
    if (o.contains("logits_error")) c.logits_error = json_to_double(o["logits_error"], osrc, "logits_error");
    if (o.contains("logits_tolerance")) c.logits_tolerance = json_to_double(o["logits_tolerance"], osrc, "logits_tolerance");
    if (o.contains("logits_nmse")) c.logits_nmse = json_to_double(o["logits_nmse"], osrc, "logits_nmse");
    if (o.contains("first_divergence") && o["first_divergence"].is_object()) {
      const auto& f = o["first_divergence"];
      const std::string fsrc = osrc + ".first_divergence";
      Divergence d;
      d.op = static_cast<size_t>(require<int64_t>(f, "op", fsrc));
      d.batch = optional_index(f, "batch", fsrc);
      d.token = optional_index(f, "token", fsrc);
      d.layer = optional_index(f, "layer", fsrc);
      d.tensor = require<std::string>(f, "tensor", fsrc);
      d.error = f.contains("error") ? json_to_double(f["error"], fsrc, "error") : 0.0;
      d.tolerance = f.contains("tolerance") ? json_to_double(f["tolerance"], fsrc, "tolerance") : 0.0;
      d.detail = optional_string(f, "detail", fsrc);
      c.first_divergence = d;
    }
  }
  c.load_observed_tensors(j, src);
  return c;
}

void DivergenceCase::load_observed_tensors(const nlohmann::json& j, const std::string& src) {
  // The case writer stores the tensors at every numeric first divergence: without them (or with
  // a corrupt file) the case is not what it claims to be.
  const bool expected = first_divergence && numeric_tensor(first_divergence->tensor);
  if (!j.contains("tensors")) {
    if (expected) {
      throw InputError(fmt::format("{}: missing key 'tensors' (the observed tensors of its {} divergence)", src,
                                   first_divergence->tensor));
    }
    return;
  }
  const fs::path file = dir / require<std::string>(j, "tensors", src);
  const safetensors::File f = safetensors::File::open(file);
  for (const auto& name : f.names()) {
    if (name != "a" && name != "b" && name != "reference") {
      throw InputError(fmt::format("{}: tensor '{}': expected only 'a', 'b' and 'reference'", file.string(), name));
    }
    observed_tensors[name] = f.tensor(name);
  }
  for (const char* side : {"a", "b"}) {
    if (expected && !observed_tensors.count(side)) {
      throw InputError(fmt::format("{}: missing tensor '{}' (the {} divergence as path {} computed it)", file.string(),
                                   side, first_divergence->tensor, side));
    }
  }
  const auto meta = f.metadata().find("tensor");
  if (first_divergence && meta != f.metadata().end() && meta->second != first_divergence->tensor) {
    throw InputError(fmt::format("{}: metadata 'tensor' is '{}' but {} records a divergence in '{}'", file.string(),
                                 truncate_for_message(meta->second), src, first_divergence->tensor));
  }
  if (observed_tensors.count("a") && observed_tensors.count("b") &&
      observed_tensors["a"].sizes() != observed_tensors["b"].sizes()) {
    throw InputError(fmt::format("{}: tensors 'a' and 'b' differ in shape", file.string()));
  }
}

std::optional<bool> DivergenceCase::observed_tensors_match(const CaseRun& run) const {
  if (!first_divergence || !run.comparison.first_divergence || observed_tensors.empty()) return std::nullopt;
  const Divergence& d = *run.comparison.first_divergence;
  bool same = true;
  for (const auto& [side, result] : {std::pair<const char*, const ScenarioResult*>{"a", &run.a},
                                     {"b", &run.b},
                                     {"reference", &run.reference}}) {
    const auto it = observed_tensors.find(side);
    if (it == observed_tensors.end()) continue;
    const torch::Tensor now = tensor_at(*result, d);
    same = same && now.defined() && bytes_equal(now.detach().cpu().contiguous(), it->second);
  }
  return same;
}

Mamba2Checkpoint DivergenceCase::checkpoint() const {
  const Mamba2Checkpoint full = Mamba2Checkpoint::load(scenario.model_dir);
  if (model_layers > full.config.num_hidden_layers) {
    throw InputError(fmt::format("{}: key 'model_layers': {} but {} has {} layers", (dir / kCaseFile).string(),
                                 model_layers, scenario.model_dir.string(), full.config.num_hidden_layers));
  }
  return model_layers == full.config.num_hidden_layers ? full : full.first_layers(model_layers);
}

CaseRun DivergenceCase::replay() const { return run_paths(scenario, checkpoint(), path_a, path_b, tolerance); }

void DivergenceCase::observe(const CaseRun& run) {
  const Comparison& c = run.comparison;
  observed_verdict = c.agree ? "agree" : "diverge";
  observed_class = divergence_class(c);
  logits_error = c.logits_error;
  logits_tolerance = c.logits_tolerance;
  logits_nmse = c.logits_nmse;
  first_divergence = c.first_divergence;
}

void DivergenceCase::save(const fs::path& out, const CaseRun* run) const {
  std::error_code ec;
  fs::create_directories(out, ec);
  if (!fs::is_directory(out)) throw InputError(fmt::format("{}: cannot create the case directory", out.string()));

  // A `file:` input is copied in beside case.json, so the case travels as one directory.
  auto keep_file = [&](const std::string& name, const char* side) -> std::string {
    if (!is_file_path(name)) return name;
    const fs::path src = file_path_target(name);
    const std::string local = fmt::format("{}.safetensors", side);
    const fs::path dst = out / local;
    if (!fs::exists(dst) || !fs::equivalent(src, dst, ec)) {
      fs::copy_file(src, dst, fs::copy_options::overwrite_existing, ec);
      if (ec) throw InputError(fmt::format("{}: cannot copy into {}: {}", src.string(), dst.string(), ec.message()));
    }
    return file_path_name(local);
  };
  const std::string a = keep_file(path_a, "a"), b = keep_file(path_b, "b");

  Scenario s = scenario;
  s.file = out / kScenarioFile;
  s.save(out / kScenarioFile);

  Comparison observed;
  observed.agree = observed_verdict != "diverge";
  observed.first_divergence = first_divergence;
  observed.logits_error = logits_error;
  observed.logits_tolerance = logits_tolerance;
  observed.logits_nmse = logits_nmse;

  nlohmann::ordered_json j;  // keys in the order a reader wants them, "format" first
  j["format"] = kCaseFormat;
  if (!reproduces.empty()) j["reproduces"] = reproduces;
  if (!origin.empty()) j["origin"] = origin;
  j["scenario"] = kScenarioFile;
  j["model_layers"] = model_layers;
  j["paths"] = {a, b};
  j["tolerance"] = {{"multiplier", tolerance.multiplier},
                    {"stochastic_multiplier", tolerance.stochastic_multiplier},
                    {"stochastic_multiplier_bfloat16", tolerance.stochastic_multiplier_bfloat16},
                    {"stochastic_multiplier_float16", tolerance.stochastic_multiplier_float16},
                    {"floor_float32", tolerance.floor_float32},
                    {"floor_bfloat16", tolerance.floor_bfloat16},
                    {"floor_float16", tolerance.floor_float16}};
  j["expected"] = expected;
  j["observed"] = observation_json(observed);

  if (run && run->comparison.first_divergence) {
    const Divergence& d = *run->comparison.first_divergence;
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    for (const auto& [side, result] : {std::pair<const char*, const ScenarioResult*>{"a", &run->a},
                                       {"b", &run->b},
                                       {"reference", &run->reference}}) {
      const torch::Tensor t = tensor_at(*result, d);
      if (t.defined()) tensors.emplace_back(side, t.detach().cpu().contiguous());
    }
    const std::map<std::string, std::string> meta = {{"divergence", describe(d)},
                                                     {"tensor", d.tensor},
                                                     {"a", run->a.path},
                                                     {"b", run->b.path},
                                                     {"a.dispatch_trace", trace_json(run->a)},
                                                     {"b.dispatch_trace", trace_json(run->b)}};
    safetensors::write(out / kObservedFile, tensors, meta);
    j["tensors"] = kObservedFile;
  } else if (!run && !observed_tensors.empty()) {  // a loaded case saved again: its tensors go with it
    std::vector<std::pair<std::string, torch::Tensor>> tensors(observed_tensors.begin(), observed_tensors.end());
    std::map<std::string, std::string> meta;
    if (first_divergence) meta = {{"divergence", describe(*first_divergence)}, {"tensor", first_divergence->tensor}};
    safetensors::write(out / kObservedFile, tensors, meta);
    j["tensors"] = kObservedFile;
  } else {
    fs::remove(out / kObservedFile, ec);
  }
  write_text_atomically(out / kCaseFile, j.dump(1) + "\n");
}

DivergenceCase make_case(const Scenario& scenario, const Mamba2Checkpoint& ck, const CaseRun& run,
                         const TolerancePolicy& policy, const std::string& expected, const std::string& origin) {
  DivergenceCase c;
  c.scenario = scenario;
  c.model_layers = ck.config.num_hidden_layers;
  c.path_a = run.path_a;
  c.path_b = run.path_b;
  c.tolerance = policy;
  c.expected = expected;
  c.origin = origin;
  c.observe(run);
  return c;
}

}  // namespace mambadiff
