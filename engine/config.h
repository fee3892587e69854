// Mamba2Config: the model's hyper-parameters, read from a HuggingFace `config.json` (SPEC §2).
// This is the one place that maps config keys; everything else reads the struct.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>

namespace mambadiff {

// How the gated RMSNorm after the scan reduces (SPEC §2). HF transformers (5.x) normalizes over
// all of d_inner ("ungrouped", the default); mamba_ssm's RMSNormGated uses groups of
// d_inner / n_groups. Stored in config.json under the key `mambadiff_gated_norm`
// ("ungrouped" | "grouped"); absent means ungrouped, the HF behaviour.
enum class GatedNormGrouping { kUngrouped, kGrouped };

struct Mamba2Config {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t state_size = 0;   // N
  int64_t expand = 2;
  int64_t head_dim = 0;     // P
  int64_t num_heads = 0;    // H
  int64_t n_groups = 1;     // G
  int64_t chunk_size = 256;
  int64_t conv_kernel = 4;  // K
  double time_step_min = 0.0;  // time_step_limit[0]
  double time_step_max = 0.0;  // time_step_limit[1]; +inf when unlimited
  double layer_norm_epsilon = 1e-5;
  bool residual_in_fp32 = true;
  bool use_bias = false;
  bool use_conv_bias = true;
  bool tie_word_embeddings = false;
  GatedNormGrouping gated_norm = GatedNormGrouping::kUngrouped;

  int64_t d_inner() const { return expand * hidden_size; }
  int64_t conv_dim() const { return d_inner() + 2 * n_groups * state_size; }
  // in_proj output: [gate (d_inner), xBC (conv_dim), dt (H)]
  int64_t in_proj_dim() const { return d_inner() + conv_dim() + num_heads; }
  int64_t heads_per_group() const { return num_heads / n_groups; }
  int64_t gated_norm_group_size() const {
    return gated_norm == GatedNormGrouping::kGrouped ? d_inner() / n_groups : d_inner();
  }

  // Throws InputError naming `source` and the keys at fault.
  void validate(const std::string& source) const;
  // Reads and validates; InputError names the file and key.
  static Mamba2Config from_json(const nlohmann::json& j, const std::string& source);
  static Mamba2Config load(const std::filesystem::path& config_json);
  // The HF keys (time_step_limit's infinity written as {"__float__": "Infinity"}).
  nlohmann::json to_json() const;
};

// Parses JSON text that may contain the non-standard bare literals Infinity, -Infinity and NaN
// (Python's json.dumps writes them; older transformers config.json files have them). The bare
// literals, outside string literals, are rewritten to strings before nlohmann::json parses.
nlohmann::json parse_json_allowing_nonfinite(const std::string& text, const std::string& source);

// A JSON number or one of the spellings of a non-finite float: 1e20, "Infinity", "-Infinity",
// "inf", "NaN", {"__float__": "Infinity"}. Throws InputError naming source and key.
double json_to_double(const nlohmann::json& v, const std::string& source, const std::string& key);

}  // namespace mambadiff
