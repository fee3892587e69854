#include "engine/config.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>

#include "engine/errors.h"

namespace mambadiff {

nlohmann::json parse_json_allowing_nonfinite(const std::string& text, const std::string& source) {
  static const char* const kLiterals[] = {"-Infinity", "Infinity", "NaN"};
  std::string out;
  out.reserve(text.size() + 16);
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < text.size()) {
        out += text[++i];
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
      out += c;
      continue;
    }
    bool replaced = false;
    for (const char* lit : kLiterals) {
      const size_t n = std::char_traits<char>::length(lit);
      if (text.compare(i, n, lit) == 0) {
        out += '"';
        out += lit;
        out += '"';
        i += n - 1;
        replaced = true;
        break;
      }
    }
    if (!replaced) out += c;
  }
  try {
    return nlohmann::json::parse(out);
  } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range for a number like 1e400
    throw InputError(fmt::format("{}: not valid JSON: {}", source, e.what()));
  }
}

double json_to_double(const nlohmann::json& v, const std::string& source, const std::string& key) {
  if (v.is_number()) return v.get<double>();
  const nlohmann::json* s = &v;
  if (v.is_object() && v.contains("__float__")) s = &v.at("__float__");
  if (s->is_string()) {
    const std::string t = s->get<std::string>();
    if (t == "Infinity" || t == "inf" || t == "+inf" || t == "+Infinity") {
      return std::numeric_limits<double>::infinity();
    }
    if (t == "-Infinity" || t == "-inf") return -std::numeric_limits<double>::infinity();
    if (t == "NaN" || t == "nan") return std::numeric_limits<double>::quiet_NaN();
  }
  throw InputError(fmt::format("{}: key '{}': expected a number or a spelling of infinity, got {}",
                               source, key, v.dump()));
}

namespace {

int64_t get_int(const nlohmann::json& j, const std::string& source, const char* key,
                std::optional<int64_t> fallback = std::nullopt) {
  if (!j.contains(key)) {
    if (fallback) return *fallback;
    throw InputError(fmt::format("{}: missing key '{}'", source, key));
  }
  const auto& v = j.at(key);
  if (!v.is_number_integer()) {
    throw InputError(fmt::format("{}: key '{}': expected an integer, got {}", source, key, v.dump()));
  }
  return v.get<int64_t>();
}

bool get_bool(const nlohmann::json& j, const std::string& source, const char* key, bool fallback) {
  if (!j.contains(key)) return fallback;
  const auto& v = j.at(key);
  if (!v.is_boolean()) {
    throw InputError(fmt::format("{}: key '{}': expected true or false, got {}", source, key, v.dump()));
  }
  return v.get<bool>();
}

}  // namespace

Mamba2Config Mamba2Config::from_json(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) throw InputError(fmt::format("{}: expected a JSON object", source));
  Mamba2Config c;
  c.vocab_size = get_int(j, source, "vocab_size");
  c.hidden_size = get_int(j, source, "hidden_size");
  c.num_hidden_layers = get_int(j, source, "num_hidden_layers");
  c.state_size = get_int(j, source, "state_size");
  c.expand = get_int(j, source, "expand", 2);
  c.head_dim = get_int(j, source, "head_dim");
  c.n_groups = get_int(j, source, "n_groups", 1);
  // HF's default num_heads is d_inner / head_dim when the key is absent.
  c.num_heads = get_int(j, source, "num_heads",
                        c.head_dim > 0 ? std::optional<int64_t>(c.expand * c.hidden_size / c.head_dim)
                                       : std::nullopt);
  c.chunk_size = get_int(j, source, "chunk_size", 256);
  c.conv_kernel = get_int(j, source, "conv_kernel", 4);
  c.time_step_min = 0.0;
  c.time_step_max = std::numeric_limits<double>::infinity();
  if (j.contains("time_step_limit")) {
    const auto& lim = j.at("time_step_limit");
    if (!lim.is_array() || lim.size() != 2) {
      throw InputError(fmt::format("{}: key 'time_step_limit': expected [min, max], got {}", source,
                                   lim.dump()));
    }
    c.time_step_min = json_to_double(lim[0], source, "time_step_limit[0]");
    c.time_step_max = json_to_double(lim[1], source, "time_step_limit[1]");
  }
  if (j.contains("layer_norm_epsilon")) {
    c.layer_norm_epsilon = json_to_double(j.at("layer_norm_epsilon"), source, "layer_norm_epsilon");
  }
  c.residual_in_fp32 = get_bool(j, source, "residual_in_fp32", true);
  c.use_bias = get_bool(j, source, "use_bias", false);
  c.use_conv_bias = get_bool(j, source, "use_conv_bias", true);
  c.tie_word_embeddings = get_bool(j, source, "tie_word_embeddings", false);
  if (j.contains("mambadiff_gated_norm")) {
    const auto& g = j.at("mambadiff_gated_norm");
    if (g == "grouped") {
      c.gated_norm = GatedNormGrouping::kGrouped;
    } else if (g == "ungrouped") {
      c.gated_norm = GatedNormGrouping::kUngrouped;
    } else {
      throw InputError(fmt::format(
          "{}: key 'mambadiff_gated_norm': expected \"grouped\" or \"ungrouped\", got {}", source,
          g.dump()));
    }
  }
  c.validate(source);
  return c;
}

void Mamba2Config::validate(const std::string& source) const {
  auto positive = [&](const char* key, int64_t v) {
    if (v <= 0) throw InputError(fmt::format("{}: key '{}' must be positive, got {}", source, key, v));
  };
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("num_hidden_layers", num_hidden_layers);
  positive("state_size", state_size);
  positive("expand", expand);
  positive("head_dim", head_dim);
  positive("num_heads", num_heads);
  positive("n_groups", n_groups);
  positive("chunk_size", chunk_size);
  positive("conv_kernel", conv_kernel);
  if (hidden_size * expand != num_heads * head_dim) {
    throw InputError(fmt::format(
        "{}: inconsistent config: hidden_size*expand ({}*{}={}) != num_heads*head_dim ({}*{}={})",
        source, hidden_size, expand, hidden_size * expand, num_heads, head_dim, num_heads * head_dim));
  }
  if (num_heads % n_groups != 0) {
    throw InputError(fmt::format("{}: inconsistent config: num_heads ({}) % n_groups ({}) != 0",
                                 source, num_heads, n_groups));
  }
  if (std::isnan(time_step_min) || std::isnan(time_step_max) || time_step_min < 0 ||
      time_step_max < time_step_min) {
    throw InputError(fmt::format(
        "{}: key 'time_step_limit': expected 0 <= min <= max, got [{}, {}]", source, time_step_min,
        time_step_max));
  }
  if (!(layer_norm_epsilon > 0)) {
    throw InputError(fmt::format("{}: key 'layer_norm_epsilon' must be positive", source));
  }
}

Mamba2Config Mamba2Config::load(const std::filesystem::path& config_json) {
  std::ifstream in(config_json, std::ios::binary);
  if (!in) throw InputError(fmt::format("{}: cannot open", config_json.string()));
  std::stringstream ss;
  ss << in.rdbuf();
  return from_json(parse_json_allowing_nonfinite(ss.str(), config_json.string()), config_json.string());
}

nlohmann::json Mamba2Config::to_json() const {
  nlohmann::json lim_max = std::isinf(time_step_max) ? nlohmann::json{{"__float__", "Infinity"}}
                                                     : nlohmann::json(time_step_max);
  nlohmann::json j = {
      {"model_type", "mamba2"},
      {"vocab_size", vocab_size},
      {"hidden_size", hidden_size},
      {"num_hidden_layers", num_hidden_layers},
      {"state_size", state_size},
      {"expand", expand},
      {"head_dim", head_dim},
      {"num_heads", num_heads},
      {"n_groups", n_groups},
      {"chunk_size", chunk_size},
      {"conv_kernel", conv_kernel},
      {"time_step_limit", nlohmann::json::array({time_step_min, lim_max})},
      {"layer_norm_epsilon", layer_norm_epsilon},
      {"residual_in_fp32", residual_in_fp32},
      {"use_bias", use_bias},
      {"use_conv_bias", use_conv_bias},
      {"tie_word_embeddings", tie_word_embeddings},
  };
  if (gated_norm == GatedNormGrouping::kGrouped) j["mambadiff_gated_norm"] = "grouped";
  return j;
}

}  // namespace mambadiff
