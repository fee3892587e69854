#include "engine/config.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>

#include "engine/checked_math.h"
#include "engine/errors.h"
#include "engine/input_file.h"

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
  return parse_input_json(out, source);
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
                               source, key, quote_json(v)));
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
    throw InputError(fmt::format("{}: key '{}': expected an integer, got {}", source, key, quote_json(v)));
  }
  return v.get<int64_t>();
}

bool get_bool(const nlohmann::json& j, const std::string& source, const char* key, bool fallback) {
  if (!j.contains(key)) return fallback;
  const auto& v = j.at(key);
  if (!v.is_boolean()) {
    throw InputError(fmt::format("{}: key '{}': expected true or false, got {}", source, key, quote_json(v)));
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
  // HF's default num_heads is d_inner / head_dim when the key is absent (overflow: validate names it).
  const std::optional<int64_t> d_inner = checked_mul(c.expand, c.hidden_size);
  c.num_heads = get_int(j, source, "num_heads",
                        c.head_dim > 0 ? std::optional<int64_t>(d_inner ? *d_inner / c.head_dim : 1)
                                       : std::nullopt);
  c.chunk_size = get_int(j, source, "chunk_size", 256);
  c.conv_kernel = get_int(j, source, "conv_kernel", 4);
  c.time_step_min = 0.0;
  c.time_step_max = std::numeric_limits<double>::infinity();
  if (j.contains("time_step_limit")) {
    const auto& lim = j.at("time_step_limit");
    if (!lim.is_array() || lim.size() != 2) {
      throw InputError(fmt::format("{}: key 'time_step_limit': expected [min, max], got {}", source,
                                   quote_json(lim)));
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
          quote_json(g)));
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
  // Every size the engine derives, computed with overflow checks: a product that wraps could pass
  // the consistency check below and allocate garbage. Each tensor's byte size at float64 (the
  // reference's copy, the widest dtype) must fit int64 too, as torch counts bytes in int64.
  // Folds `values` with `op` (checked_mul or checked_add), naming `what` when a step overflows.
  auto fold = [&](const char* what, const char* kind, int64_t start, std::initializer_list<int64_t> values,
                  std::optional<int64_t> (*op)(int64_t, int64_t)) {
    int64_t acc = start;
    for (int64_t v : values) {
      const auto next = op(acc, v);
      if (!next) throw InputError(fmt::format("{}: keys {}: the {} overflows 64 bits", source, what, kind));
      acc = *next;
    }
    return acc;
  };
  auto product = [&](const char* what, std::initializer_list<int64_t> factors) {
    return fold(what, "product", 1, factors, checked_mul);
  };
  auto sum = [&](const char* what, std::initializer_list<int64_t> terms) { return fold(what, "sum", 0, terms, checked_add); };
  constexpr int64_t kWidestItemsize = 8;  // float64
  const int64_t inner = product("'hidden_size' * 'expand'", {hidden_size, expand});
  const int64_t heads_by_dim = product("'num_heads' * 'head_dim'", {num_heads, head_dim});
  if (inner != heads_by_dim) {
    throw InputError(fmt::format(
        "{}: inconsistent config: hidden_size*expand ({}*{}={}) != num_heads*head_dim ({}*{}={})",
        source, hidden_size, expand, inner, num_heads, head_dim, heads_by_dim));
  }
  const int64_t bc = product("2 * 'n_groups' * 'state_size'", {2, n_groups, state_size});
  const int64_t conv = sum("'hidden_size' * 'expand' + 2 * 'n_groups' * 'state_size' (conv_dim)", {inner, bc});
  const int64_t in_proj = sum("conv_dim + 'hidden_size' * 'expand' + 'num_heads' (in_proj_dim)", {conv, inner, num_heads});
  product("'vocab_size' * 'hidden_size' (embeddings, at 8 bytes)", {vocab_size, hidden_size, kWidestItemsize});
  product("in_proj_dim * 'hidden_size' (in_proj weight, at 8 bytes)", {in_proj, hidden_size, kWidestItemsize});
  product("'hidden_size' * 'expand' * 'hidden_size' (out_proj weight, at 8 bytes)", {inner, hidden_size, kWidestItemsize});
  product("conv_dim * 'conv_kernel' (conv weight, at 8 bytes)", {conv, conv_kernel, kWidestItemsize});
  product("'num_heads' * 'head_dim' * 'state_size' (ssm state, at 8 bytes)", {num_heads, head_dim, state_size, kWidestItemsize});
  product("'chunk_size' * 'chunk_size' (a chunk's segment matrix, at 8 bytes)", {chunk_size, chunk_size, kWidestItemsize});
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
  return from_json(parse_json_allowing_nonfinite(read_input_file(config_json), config_json.string()),
                   config_json.string());
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
