#include "harness/scenario.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "engine/errors.h"
#include "engine/safetensors.h"

namespace mambadiff {

const char* op_kind_name(OpKind k) {
  switch (k) {
    case OpKind::kForward: return "forward";
    case OpKind::kInject: return "inject";
    case OpKind::kSnapshot: return "snapshot";
    case OpKind::kRestore: return "restore";
    case OpKind::kReset: return "reset";
  }
  return "?";
}

torch::ScalarType parse_dtype(const std::string& name, const std::string& context) {
  static const std::map<std::string, torch::ScalarType> kDtypes = {
      {"float32", torch::kFloat32}, {"bfloat16", torch::kBFloat16},
      {"float16", torch::kFloat16}, {"float64", torch::kFloat64}};
  auto it = kDtypes.find(name);
  if (it == kDtypes.end()) {
    throw InputError(fmt::format("{}: dtype '{}' is not one of float32, bfloat16, float16, float64", context, name));
  }
  return it->second;
}

std::string dtype_string(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat32: return "float32";
    case torch::kBFloat16: return "bfloat16";
    case torch::kFloat16: return "float16";
    case torch::kFloat64: return "float64";
    default: return c10::toString(dtype);
  }
}

int64_t Scenario::batch_size() const {
  for (const auto& op : ops)
    if (op.kind == OpKind::kForward) return op.tokens.size(0);
  return 1;
}

int64_t Scenario::num_forward_ops() const {
  int64_t n = 0;
  for (const auto& op : ops) n += op.kind == OpKind::kForward;
  return n;
}

namespace {

torch::Tensor parse_tokens(const nlohmann::json& j, const std::string& where) {
  if (!j.is_array() || j.empty()) throw InputError(fmt::format("{}: 'tokens' must be a non-empty [B][T] array", where));
  const size_t T = j[0].is_array() ? j[0].size() : 0;
  if (T == 0) throw InputError(fmt::format("{}: 'tokens' rows must be non-empty arrays", where));
  torch::Tensor t = torch::empty({static_cast<int64_t>(j.size()), static_cast<int64_t>(T)}, torch::kInt64);
  auto* p = t.data_ptr<int64_t>();
  for (size_t b = 0; b < j.size(); ++b) {
    if (!j[b].is_array() || j[b].size() != T) {
      throw InputError(fmt::format("{}: 'tokens' row {} has {} tokens, row 0 has {}", where, b,
                                   j[b].is_array() ? j[b].size() : 0, T));
    }
    for (size_t i = 0; i < T; ++i) {
      if (!j[b][i].is_number_integer()) throw InputError(fmt::format("{}: 'tokens'[{}][{}] is not an integer", where, b, i));
      p[b * T + i] = j[b][i].get<int64_t>();
    }
  }
  return t;
}

template <typename T>
T require(const nlohmann::json& j, const char* key, const std::string& where) {
  if (!j.contains(key)) throw InputError(fmt::format("{}: missing key '{}'", where, key));
  try {
    return j.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    throw InputError(fmt::format("{}: key '{}' has the wrong type: {}", where, key, j.at(key).dump()));
  }
}

}  // namespace

Scenario Scenario::from_json(const nlohmann::json& j, const std::filesystem::path& file) {
  const std::string src = file.string();
  if (!j.is_object()) throw InputError(fmt::format("{}: a scenario is a JSON object", src));
  const auto format = require<std::string>(j, "format", src);
  if (format != kScenarioFormat) {
    throw InputError(fmt::format("{}: key 'format': '{}' is not '{}'", src, format, kScenarioFormat));
  }
  Scenario s;
  s.file = file;
  s.model = require<std::string>(j, "model", src);
  const auto base = file.parent_path();
  s.model_dir = std::filesystem::path(s.model).is_absolute() ? std::filesystem::path(s.model) : base / s.model;
  s.dtype = parse_dtype(j.value("dtype", std::string("float32")), src + ": key 'dtype'");
  if (!j.contains("ops") || !j["ops"].is_array()) throw InputError(fmt::format("{}: missing key 'ops' (an array)", src));

  std::set<std::string> snapshots;
  std::map<std::string, safetensors::File> delta_files;
  int64_t batch = -1;
  for (size_t i = 0; i < j["ops"].size(); ++i) {
    const auto& o = j["ops"][i];
    const std::string where = fmt::format("{}: op {}", src, i);
    const auto kind = require<std::string>(o, "op", where);
    ScenarioOp op;
    if (kind == "forward") {
      op.kind = OpKind::kForward;
      op.tokens = parse_tokens(o.contains("tokens") ? o["tokens"] : nlohmann::json(), where);
      if (batch >= 0 && op.tokens.size(0) != batch) {
        throw InputError(fmt::format("{} (forward): batch size {} disagrees with {} of an earlier op", where,
                                     op.tokens.size(0), batch));
      }
      batch = op.tokens.size(0);
    } else if (kind == "inject") {
      op.kind = OpKind::kInject;
      op.layer = require<int64_t>(o, "layer", where);
      if (!o.contains("delta") || !o["delta"].is_object()) {
        throw InputError(fmt::format("{} (inject): missing key 'delta' ({{\"file\", \"tensor\"}})", where));
      }
      op.delta_file = require<std::string>(o["delta"], "file", where + " (inject) delta");
      op.delta_tensor = require<std::string>(o["delta"], "tensor", where + " (inject) delta");
      const auto path = (base / op.delta_file).string();
      auto it = delta_files.find(path);
      if (it == delta_files.end()) it = delta_files.emplace(path, safetensors::File::open(path)).first;
      if (!it->second.contains(op.delta_tensor)) {
        throw InputError(fmt::format("{}: missing tensor '{}' (op {} inject)", path, op.delta_tensor, i));
      }
      op.delta = it->second.tensor(op.delta_tensor);
      if (!op.delta.is_floating_point() || (op.delta.dim() != 3 && op.delta.dim() != 4)) {
        throw InputError(fmt::format("{}: tensor '{}' (op {} inject): expected a float [B,H,P,N] or [H,P,N] tensor",
                                     path, op.delta_tensor, i));
      }
      if (op.delta.dim() == 4 && batch >= 0 && op.delta.size(0) != batch) {
        throw InputError(fmt::format("{} (inject): delta batch size {} disagrees with the forward ops' {}", where,
                                     op.delta.size(0), batch));
      }
    } else if (kind == "snapshot" || kind == "restore") {
      op.kind = kind == "snapshot" ? OpKind::kSnapshot : OpKind::kRestore;
      op.name = require<std::string>(o, "name", where);
      if (op.kind == OpKind::kSnapshot) {
        snapshots.insert(op.name);
      } else if (!snapshots.count(op.name)) {
        throw InputError(fmt::format("{} (restore): unknown snapshot '{}'", where, op.name));
      }
    } else if (kind == "reset") {
      op.kind = OpKind::kReset;
    } else {
      throw InputError(fmt::format("{}: unknown op '{}'", where, kind));
    }
    s.ops.push_back(std::move(op));
  }
  // A [B,H,P,N] delta before the first forward must agree with the later forwards too.
  for (size_t i = 0; i < s.ops.size(); ++i) {
    const auto& op = s.ops[i];
    if (op.kind == OpKind::kInject && op.delta.dim() == 4 && batch >= 0 && op.delta.size(0) != batch) {
      throw InputError(fmt::format("{}: op {} (inject): delta batch size {} disagrees with the forward ops' {}",
                                   src, i, op.delta.size(0), batch));
    }
  }
  return s;
}

Scenario Scenario::load(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw InputError(fmt::format("{}: cannot open scenario", file.string()));
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range for a number like 1e400
    throw InputError(fmt::format("{}: not valid JSON: {}", file.string(), e.what()));
  }
  return from_json(j, file);
}

void Scenario::save(const std::filesystem::path& out) const {
  const auto base = out.parent_path();
  const std::string delta_name = out.stem().string() + ".deltas.safetensors";
  std::vector<std::pair<std::string, torch::Tensor>> deltas;
  nlohmann::json ops_json = nlohmann::json::array();
  for (size_t i = 0; i < ops.size(); ++i) {
    const auto& op = ops[i];
    nlohmann::json o = {{"op", op_kind_name(op.kind)}};
    switch (op.kind) {
      case OpKind::kForward: {
        const torch::Tensor t = op.tokens.contiguous();
        nlohmann::json rows = nlohmann::json::array();
        for (int64_t b = 0; b < t.size(0); ++b) {
          nlohmann::json row = nlohmann::json::array();
          for (int64_t k = 0; k < t.size(1); ++k) row.push_back(t[b][k].item<int64_t>());
          rows.push_back(row);
        }
        o["tokens"] = rows;
        break;
      }
      case OpKind::kInject: {
        const std::string tensor = fmt::format("op.{}.delta", i);
        deltas.emplace_back(tensor, op.delta);
        o["layer"] = op.layer;
        o["delta"] = {{"file", delta_name}, {"tensor", tensor}};
        break;
      }
      case OpKind::kSnapshot:
      case OpKind::kRestore: o["name"] = op.name; break;
      case OpKind::kReset: break;
    }
    ops_json.push_back(o);
  }
  const auto model_rel = std::filesystem::relative(std::filesystem::absolute(model_dir),
                                                   std::filesystem::absolute(base.empty() ? "." : base));
  nlohmann::json j = {{"format", kScenarioFormat}, {"model", model_rel.string()}, {"dtype", dtype_string(dtype)},
                      {"ops", ops_json}};
  if (!deltas.empty()) safetensors::write(base / delta_name, deltas);
  const auto tmp = out.string() + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw InputError(fmt::format("{}: cannot write", out.string()));
    f << j.dump(1) << "\n";
    if (!f) throw InputError(fmt::format("{}: write failed", out.string()));
  }
  std::filesystem::rename(tmp, out);
}

}  // namespace mambadiff
