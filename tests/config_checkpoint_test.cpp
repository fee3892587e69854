// Tests for engine/config (SPEC §2: the spellings of a non-finite time_step_limit, inconsistent and
// incomplete configs) and engine/checkpoint (the three embedded models: single file and sharded,
// tied and untied lm_head, fp32/bf16/fp16 weights, optional biases absent; the model hash; and
// first_layers).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "engine/checkpoint.h"
#include "engine/chunked_path.h"
#include "engine/config.h"
#include "engine/errors.h"
#include "engine/memory_estimate.h"
#include "engine/safetensors.h"
#include "harness/scoped_env.h"
#include "tests/test_support.h"

namespace {

namespace fs = std::filesystem;
namespace st = mambadiff::safetensors;
using mambadiff::json_to_double;
using mambadiff::Mamba2Checkpoint;
using mambadiff::Mamba2Config;
using mambadiff::ScopedEnv;
using mambadiff::parse_json_allowing_nonfinite;
using mambadiff::test_support::input_error;
using mambadiff::test_support::model_dir;
using mambadiff::test_support::read_text;
using mambadiff::test_support::write_text;
using ::testing::HasSubstr;
using Named = std::vector<std::pair<std::string, torch::Tensor>>;

constexpr double kInf = std::numeric_limits<double>::infinity();

fs::path scratch(const std::string& name) {
  const fs::path p = fs::path(MAMBADIFF_TEST_TMP) / "config_checkpoint" / name;
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

// A config.json as Python's json.dumps(indent=2) writes it, with `limit_max` spliced in verbatim
// as the upper time_step_limit.
std::string config_text(const std::string& limit_max, const std::string& limit_min = "0.001") {
  return fmt::format(R"({{
  "architectures": ["Mamba2ForCausalLM"],
  "chunk_size": 16,
  "conv_kernel": 4,
  "expand": 2,
  "head_dim": 16,
  "hidden_size": 32,
  "layer_norm_epsilon": 1e-05,
  "model_type": "mamba2",
  "n_groups": 1,
  "num_heads": 4,
  "num_hidden_layers": 2,
  "residual_in_fp32": true,
  "state_size": 16,
  "tie_word_embeddings": true,
  "time_step_limit": [
    {},
    {}
  ],
  "use_bias": false,
  "use_conv_bias": true,
  "vocab_size": 96
}}
)",
                     limit_min, limit_max);
}

nlohmann::json base_config() { return nlohmann::json::parse(config_text("0.1")); }

Mamba2Config parse_config(const std::string& text, const std::string& source = "config.json") {
  return Mamba2Config::from_json(parse_json_allowing_nonfinite(text, source), source);
}

// ---- Mamba2Config: time_step_limit spellings ---------------------------------------------------

TEST(Mamba2Config, TimeStepLimitInfinitySpellings) {
  struct Case {
    std::string spelling;
    double expected;
  };
  const std::vector<Case> cases = {
      {"Infinity", kInf},                           // older transformers: the bare literal
      {"\"Infinity\"", kInf},                       // a string
      {"{\"__float__\": \"Infinity\"}", kInf},      // transformers 5.x
      {"{\n      \"__float__\": \"Infinity\"\n    }", kInf},
      {"1e20", 1e20},                               // a large number
      {"1E+20", 1e20},
      {"0.1", 0.1},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.spelling);
    Mamba2Config cfg;
    ASSERT_NO_THROW(cfg = parse_config(config_text(c.spelling)));
    EXPECT_EQ(cfg.time_step_max, c.expected);
    EXPECT_DOUBLE_EQ(cfg.time_step_min, 0.001);
    EXPECT_EQ(cfg.num_heads, 4);
    EXPECT_EQ(cfg.vocab_size, 96);
  }
}

TEST(Mamba2Config, LoadReadsEverySpellingFromAFile) {
  const fs::path dir = scratch("load_spellings");
  for (const std::string spelling : {"Infinity", "\"Infinity\"", "{\"__float__\": \"Infinity\"}", "1e20"}) {
    SCOPED_TRACE(spelling);
    write_text(dir / "config.json", config_text(spelling, "0.0"));
    const Mamba2Config cfg = Mamba2Config::load(dir / "config.json");
    EXPECT_EQ(cfg.time_step_min, 0.0);
    EXPECT_EQ(cfg.time_step_max, spelling == "1e20" ? 1e20 : kInf);
  }
}

TEST(Mamba2Config, EmbeddedModelsTimeStepLimits) {
  EXPECT_EQ(Mamba2Config::load(model_dir("tiny") / "config.json").time_step_max, kInf);
  EXPECT_EQ(Mamba2Config::load(model_dir("grouped") / "config.json").time_step_max, kInf);
  const Mamba2Config limited = Mamba2Config::load(model_dir("limited") / "config.json");
  EXPECT_DOUBLE_EQ(limited.time_step_max, 0.05);
  EXPECT_EQ(limited.time_step_min, 0.0);
}

TEST(Mamba2Config, AbsentTimeStepLimitIsUnlimited) {
  nlohmann::json j = base_config();
  j.erase("time_step_limit");
  const Mamba2Config c = Mamba2Config::from_json(j, "cfg");
  EXPECT_EQ(c.time_step_min, 0.0);
  EXPECT_EQ(c.time_step_max, kInf);
}

TEST(Mamba2Config, BadTimeStepLimitsAreRejectedNamingTheKey) {
  for (const std::string spelling : {"-Infinity", "NaN", "\"banana\"", "true", "0.0001"}) {
    SCOPED_TRACE(spelling);
    // min 0.001 > max 0.0001 for the last.
    const std::string m = input_error([&] { parse_config(config_text(spelling), "models/x/config.json"); });
    EXPECT_THAT(m, HasSubstr("models/x/config.json"));
    EXPECT_THAT(m, HasSubstr("time_step_limit"));
  }
  const std::string m = input_error([&] {
    nlohmann::json j = base_config();
    j["time_step_limit"] = {0.0};
    Mamba2Config::from_json(j, "cfg.json");
  });
  EXPECT_THAT(m, HasSubstr("'time_step_limit'"));
}

// ---- parse_json_allowing_nonfinite ---------------------------------------------------------------

TEST(ParseJsonAllowingNonfinite, BareLiteralsBecomeStrings) {
  const nlohmann::json j = parse_json_allowing_nonfinite(R"({"a": [Infinity, -Infinity, NaN], "b":Infinity})", "t");
  EXPECT_EQ(j["a"][0], "Infinity");
  EXPECT_EQ(j["a"][1], "-Infinity");
  EXPECT_EQ(j["a"][2], "NaN");
  EXPECT_EQ(json_to_double(j["a"][0], "t", "a[0]"), kInf);
  EXPECT_EQ(json_to_double(j["a"][1], "t", "a[1]"), -kInf);
  EXPECT_TRUE(std::isnan(json_to_double(j["a"][2], "t", "a[2]")));
  EXPECT_EQ(json_to_double(j["b"], "t", "b"), kInf);
}

TEST(ParseJsonAllowingNonfinite, LiteralsInsideStringsAreNotRewritten) {
  const std::string text = R"({
    "name": "Infinity and beyond",
    "quoted": "say \"Infinity\" NaN times",
    "Infinity": "-Infinity is a string here",
    "backslash": "ends with a backslash\\",
    "after": Infinity,
    "unicode": "\u0022Infinity",
    "list": ["NaN", "x-Infinity", NaN]
  })";
  const nlohmann::json j = parse_json_allowing_nonfinite(text, "t");
  EXPECT_EQ(j["name"], "Infinity and beyond");
  EXPECT_EQ(j["quoted"], "say \"Infinity\" NaN times");
  EXPECT_EQ(j["Infinity"], "-Infinity is a string here");  // a key named Infinity stays a key
  EXPECT_EQ(j["backslash"], "ends with a backslash\\");
  EXPECT_EQ(j["after"], "Infinity");  // the escaped backslash did not leave the scanner inside a string
  EXPECT_EQ(j["unicode"], "\"Infinity");
  EXPECT_EQ(j["list"], nlohmann::json({"NaN", "x-Infinity", "NaN"}));
  EXPECT_EQ(j.size(), 7u);
  // The same text through the strict parser agrees on every string-valued key.
}

TEST(ParseJsonAllowingNonfinite, InvalidJsonNamesTheSource) {
  const std::string m = input_error([] { parse_json_allowing_nonfinite("{\"a\": Infinit}", "some/config.json"); });
  EXPECT_THAT(m, HasSubstr("some/config.json"));
  EXPECT_THAT(m, HasSubstr("JSON"));
}

TEST(JsonToDouble, Spellings) {
  EXPECT_EQ(json_to_double(1e20, "s", "k"), 1e20);
  EXPECT_EQ(json_to_double(3, "s", "k"), 3.0);
  EXPECT_EQ(json_to_double("Infinity", "s", "k"), kInf);
  EXPECT_EQ(json_to_double("inf", "s", "k"), kInf);
  EXPECT_EQ(json_to_double("-inf", "s", "k"), -kInf);
  EXPECT_EQ(json_to_double(nlohmann::json{{"__float__", "Infinity"}}, "s", "k"), kInf);
  EXPECT_EQ(json_to_double(nlohmann::json{{"__float__", "-Infinity"}}, "s", "k"), -kInf);
  EXPECT_TRUE(std::isnan(json_to_double(nlohmann::json{{"__float__", "NaN"}}, "s", "k")));
  std::string m = input_error([] { json_to_double("banana", "file.json", "time_step_limit[1]"); });
  EXPECT_THAT(m, HasSubstr("file.json"));
  EXPECT_THAT(m, HasSubstr("time_step_limit[1]"));
  EXPECT_THAT(m, HasSubstr("banana"));
  m = input_error([] { json_to_double(nlohmann::json{{"__int__", "1"}}, "file.json", "k"); });
  EXPECT_THAT(m, HasSubstr("'k'"));
}

// ---- Mamba2Config: validation ------------------------------------------------------------------

TEST(Mamba2Config, InconsistentHeadsRejectedNamingTheKeys) {
  nlohmann::json j = base_config();
  j["num_heads"] = 5;  // hidden_size*expand = 64, num_heads*head_dim = 80
  const std::string m = input_error([&] { Mamba2Config::from_json(j, "models/a/config.json"); });
  EXPECT_THAT(m, HasSubstr("models/a/config.json"));
  for (const char* key : {"hidden_size", "expand", "num_heads", "head_dim"}) EXPECT_THAT(m, HasSubstr(key));
  EXPECT_THAT(m, HasSubstr("64"));
  EXPECT_THAT(m, HasSubstr("80"));

  j = base_config();
  j["expand"] = 3;
  EXPECT_THAT(input_error([&] { Mamba2Config::from_json(j, "c"); }), HasSubstr("hidden_size*expand"));
}

// Sizes whose products overflow 64 bits are input errors naming the keys; before the checks a
// wrapped product could even pass the consistency check (32 * (2^59 + 2) wraps to 64 = 4 * 16).
TEST(Mamba2Config, OverflowingSizesAreRejectedNamingTheKeys) {
  const int64_t k2to59 = int64_t{1} << 59, k2to62 = int64_t{1} << 62;
  const std::vector<std::tuple<std::string, nlohmann::json, std::vector<std::string>>> cases = {
      {"expand", k2to59 + 2, {"'hidden_size' * 'expand'", "overflows"}},
      {"chunk_size", k2to62, {"'chunk_size'", "overflows"}},
      {"vocab_size", k2to62, {"'vocab_size'", "overflows"}},
      {"state_size", k2to62, {"'state_size'", "overflows"}},
      {"conv_kernel", k2to62, {"'conv_kernel'", "overflows"}},
  };
  for (const auto& [key, value, expect] : cases) {
    SCOPED_TRACE(key);
    nlohmann::json j = base_config();
    j[key] = value;
    const std::string m = input_error([&] { Mamba2Config::from_json(j, "models/o/config.json"); });
    EXPECT_THAT(m, HasSubstr("models/o/config.json"));
    for (const auto& sub : expect) EXPECT_THAT(m, HasSubstr(sub));
  }
  // The default num_heads (d_inner / head_dim) is computed from an overflowing product too.
  nlohmann::json j = base_config();
  j.erase("num_heads");
  j["expand"] = k2to59 + 2;
  EXPECT_THAT(input_error([&] { Mamba2Config::from_json(j, "c"); }), HasSubstr("'hidden_size' * 'expand'"));
}

// ---- the memory estimate ------------------------------------------------------------------------

TEST(MemoryEstimate, ChunkSizeOfABillionIsRejectedBeforeAllocatingNamingTheKey) {
  Mamba2Config c = parse_config(config_text("0.1"));
  // One token padded to a 10^9-token chunk, and its 10^9 x 10^9 segment matrices: far past any machine.
  c.chunk_size = 1'000'000'000;
  c.validate("c");  // the config itself is valid: chunk_size^2 * 8 fits 64 bits
  const mambadiff::MemoryEstimate m = mambadiff::estimate_run_memory(c, torch::kFloat32, 1, {1}, true);
  EXPECT_THAT(m.largest, HasSubstr("chunk_size=1000000000"));
  const std::string msg = input_error([&] { mambadiff::require_memory(m, "scenario.json: op 0"); });
  EXPECT_THAT(msg, HasSubstr("scenario.json: op 0"));
  EXPECT_THAT(msg, HasSubstr("chunk_size=1000000000"));
  EXPECT_THAT(msg, HasSubstr("MAMBADIFF_MEMORY_LIMIT_BYTES"));
}

TEST(MemoryEstimate, GrowsWithTheRunAndHonoursTheLimitVariable) {
  const Mamba2Config c = parse_config(config_text("0.1"));
  const auto small = mambadiff::estimate_run_memory(c, torch::kFloat32, 1, {5}, true);
  const auto longer = mambadiff::estimate_run_memory(c, torch::kFloat32, 1, {5000}, true);
  const auto wider = mambadiff::estimate_run_memory(c, torch::kFloat32, 8, {5000}, true);
  const auto more_ops = mambadiff::estimate_run_memory(c, torch::kFloat32, 8, {5000, 5000}, true);
  const auto not_kept = mambadiff::estimate_run_memory(c, torch::kFloat32, 8, {5000, 5000}, false);
  EXPECT_LT(small.bytes, longer.bytes);
  EXPECT_LT(longer.bytes, wider.bytes);
  EXPECT_LT(wider.bytes, more_ops.bytes);
  EXPECT_LT(not_kept.bytes, more_ops.bytes);
  // The kept logits alone are 8 x 10000 x 96 values in fp32 and float64: a lower bound.
  EXPECT_GE(more_ops.bytes, uint64_t{8} * 10000 * 96 * (4 + 8));

  {
    const ScopedEnv limit("MAMBADIFF_MEMORY_LIMIT_BYTES", std::to_string(longer.bytes - 1).c_str());
    EXPECT_EQ(mambadiff::memory_limit_bytes(), longer.bytes - 1);
    mambadiff::require_memory(small, "fits");  // no throw
    EXPECT_THAT(input_error([&] { mambadiff::require_memory(longer, "runs.json: op 2"); }),
                HasSubstr("runs.json: op 2"));
  }
  for (const char* bad : {"", "0", "-5", "12GB", "1e9", "99999999999999999999999"}) {
    SCOPED_TRACE(bad);
    const ScopedEnv limit("MAMBADIFF_MEMORY_LIMIT_BYTES", bad);
    EXPECT_THAT(input_error([] { mambadiff::memory_limit_bytes(); }), HasSubstr("MAMBADIFF_MEMORY_LIMIT_BYTES"));
  }
  // Without the variable: half the physical memory, which the embedded models' runs fit easily.
  ::unsetenv("MAMBADIFF_MEMORY_LIMIT_BYTES");
  EXPECT_GT(mambadiff::memory_limit_bytes(), more_ops.bytes);
}

TEST(Mamba2Config, HeadsNotDivisibleByGroupsRejectedNamingTheKeys) {
  nlohmann::json j = base_config();
  j["n_groups"] = 3;  // 4 heads
  const std::string m = input_error([&] { Mamba2Config::from_json(j, "models/b/config.json"); });
  EXPECT_THAT(m, HasSubstr("models/b/config.json"));
  EXPECT_THAT(m, HasSubstr("num_heads"));
  EXPECT_THAT(m, HasSubstr("n_groups"));
}

TEST(Mamba2Config, MissingKeysAreNamed) {
  for (const char* key : {"vocab_size", "hidden_size", "num_hidden_layers", "state_size", "head_dim"}) {
    SCOPED_TRACE(key);
    nlohmann::json j = base_config();
    j.erase(key);
    const std::string m = input_error([&] { Mamba2Config::from_json(j, "models/c/config.json"); });
    EXPECT_THAT(m, HasSubstr("models/c/config.json"));
    EXPECT_THAT(m, HasSubstr(fmt::format("'{}'", key)));
    EXPECT_THAT(m, HasSubstr("missing"));
  }
}

TEST(Mamba2Config, WrongTypesAndValuesAreNamed) {
  const std::vector<std::pair<std::string, nlohmann::json>> bad = {
      {"hidden_size", "32"},  {"vocab_size", 96.5}, {"use_bias", "false"},
      {"vocab_size", 0},      {"chunk_size", -16},  {"mambadiff_gated_norm", "sideways"},
      {"conv_kernel", nullptr}, {"layer_norm_epsilon", 0.0}};
  for (const auto& [key, value] : bad) {
    SCOPED_TRACE(key + " = " + value.dump());
    nlohmann::json j = base_config();
    j[key] = value;
    const std::string m = input_error([&] { Mamba2Config::from_json(j, "cfg.json"); });
    EXPECT_THAT(m, HasSubstr("cfg.json"));
    EXPECT_THAT(m, HasSubstr(key));
  }
  EXPECT_THAT(input_error([] { Mamba2Config::from_json(nlohmann::json::array(), "cfg.json"); }), HasSubstr("cfg.json"));
}

TEST(Mamba2Config, DefaultsAndDerivedSizes) {
  nlohmann::json j = base_config();
  for (const char* key : {"num_heads", "n_groups", "chunk_size", "conv_kernel", "expand", "use_bias",
                          "use_conv_bias", "residual_in_fp32", "tie_word_embeddings", "layer_norm_epsilon"}) {
    j.erase(key);
  }
  const Mamba2Config c = Mamba2Config::from_json(j, "cfg");
  EXPECT_EQ(c.expand, 2);
  EXPECT_EQ(c.num_heads, 4);  // HF: d_inner / head_dim
  EXPECT_EQ(c.n_groups, 1);
  EXPECT_EQ(c.chunk_size, 256);
  EXPECT_EQ(c.conv_kernel, 4);
  EXPECT_FALSE(c.use_bias);
  EXPECT_TRUE(c.use_conv_bias);
  EXPECT_TRUE(c.residual_in_fp32);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.gated_norm, mambadiff::GatedNormGrouping::kUngrouped);
  EXPECT_EQ(c.d_inner(), 64);
  EXPECT_EQ(c.conv_dim(), 64 + 2 * 16);
  EXPECT_EQ(c.in_proj_dim(), 64 + 96 + 4);
  EXPECT_EQ(c.gated_norm_group_size(), 64);

  const Mamba2Config g = Mamba2Config::load(model_dir("grouped") / "config.json");
  EXPECT_EQ(g.n_groups, 4);
  EXPECT_EQ(g.heads_per_group(), 2);
  EXPECT_EQ(g.conv_dim(), 96 + 2 * 4 * 8);
}

TEST(Mamba2Config, ToJsonRoundTrips) {
  for (const std::string name : {"tiny", "grouped", "limited"}) {
    SCOPED_TRACE(name);
    Mamba2Config c = Mamba2Config::load(model_dir(name) / "config.json");
    if (name == "grouped") c.gated_norm = mambadiff::GatedNormGrouping::kGrouped;
    const nlohmann::json j = c.to_json();
    if (std::isinf(c.time_step_max)) {
      EXPECT_EQ(j["time_step_limit"][1], (nlohmann::json{{"__float__", "Infinity"}}));
    }
    // Through text, the way it is written to and read from disk.
    const Mamba2Config back = parse_config(j.dump(2), "roundtrip");
    EXPECT_EQ(back.to_json(), j);
    EXPECT_EQ(back.time_step_max, c.time_step_max);
    EXPECT_EQ(back.gated_norm, c.gated_norm);
    EXPECT_EQ(back.conv_dim(), c.conv_dim());
  }
}

// ---- Mamba2Checkpoint: the embedded models ------------------------------------------------------

void expect_layer_shapes(const Mamba2Checkpoint& ck) {
  const auto& c = ck.config;
  const auto& w = ck.weights;
  const int64_t D = c.hidden_size, V = c.vocab_size, H = c.num_heads, I = c.d_inner();
  EXPECT_EQ(w.embeddings.sizes().vec(), (std::vector<int64_t>{V, D}));
  EXPECT_EQ(w.lm_head.sizes().vec(), (std::vector<int64_t>{V, D}));
  EXPECT_EQ(w.norm_f_weight.sizes().vec(), (std::vector<int64_t>{D}));
  ASSERT_EQ(static_cast<int64_t>(w.layers.size()), c.num_hidden_layers);
  for (const auto& l : w.layers) {
    EXPECT_EQ(l.norm_weight.sizes().vec(), (std::vector<int64_t>{D}));
    EXPECT_EQ(l.in_proj_weight.sizes().vec(), (std::vector<int64_t>{c.in_proj_dim(), D}));
    EXPECT_EQ(l.conv1d_weight.sizes().vec(), (std::vector<int64_t>{c.conv_dim(), c.conv_kernel}));
    EXPECT_EQ(l.dt_bias.sizes().vec(), (std::vector<int64_t>{H}));
    EXPECT_EQ(l.A_log.sizes().vec(), (std::vector<int64_t>{H}));
    EXPECT_EQ(l.D.sizes().vec(), (std::vector<int64_t>{H}));
    EXPECT_EQ(l.gated_norm_weight.sizes().vec(), (std::vector<int64_t>{I}));
    EXPECT_EQ(l.out_proj_weight.sizes().vec(), (std::vector<int64_t>{D, I}));
    EXPECT_EQ(l.in_proj_bias.defined(), c.use_bias);
    EXPECT_EQ(l.out_proj_bias.defined(), c.use_bias);
    EXPECT_EQ(l.conv1d_bias.defined(), c.use_conv_bias);
    if (l.in_proj_bias.defined()) {
      EXPECT_EQ(l.in_proj_bias.sizes().vec(), (std::vector<int64_t>{c.in_proj_dim()}));
    }
    if (l.out_proj_bias.defined()) {
      EXPECT_EQ(l.out_proj_bias.sizes().vec(), (std::vector<int64_t>{D}));
    }
    if (l.conv1d_bias.defined()) {
      EXPECT_EQ(l.conv1d_bias.sizes().vec(), (std::vector<int64_t>{c.conv_dim()}));
    }
  }
}

TEST(Mamba2Checkpoint, LoadsTinySingleFileTiedFloat32) {
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(model_dir("tiny"));
  EXPECT_EQ(ck.directory, model_dir("tiny"));
  EXPECT_TRUE(ck.config.tie_word_embeddings);
  EXPECT_EQ(ck.config.num_hidden_layers, 2);
  EXPECT_EQ(ck.weights.embeddings.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(ck.weights.lm_head.is_same(ck.weights.embeddings)) << "tied: lm_head is the embeddings";
  expect_layer_shapes(ck);
  EXPECT_FALSE(ck.weights.layers[0].in_proj_bias.defined());
  EXPECT_TRUE(ck.weights.layers[0].conv1d_bias.defined());
  // The values are the file's.
  const auto f = st::File::open(model_dir("tiny") / "model.safetensors");
  EXPECT_TRUE(torch::equal(ck.weights.layers[1].A_log, f.tensor("backbone.layers.1.mixer.A_log")));
  EXPECT_TRUE(torch::equal(ck.weights.layers[1].conv1d_weight,
                           f.tensor("backbone.layers.1.mixer.conv1d.weight").reshape({96, 4})));
}

TEST(Mamba2Checkpoint, LoadsGroupedShardedUntiedBFloat16WithBiases) {
  ASSERT_TRUE(fs::exists(model_dir("grouped") / "model.safetensors.index.json"));
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(model_dir("grouped"));
  EXPECT_FALSE(ck.config.tie_word_embeddings);
  EXPECT_EQ(ck.config.num_hidden_layers, 3);
  EXPECT_EQ(ck.config.n_groups, 4);
  EXPECT_TRUE(ck.config.use_bias);
  EXPECT_EQ(ck.weights.embeddings.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(ck.weights.layers[2].in_proj_weight.scalar_type(), torch::kBFloat16);
  EXPECT_FALSE(ck.weights.lm_head.is_same(ck.weights.embeddings));
  EXPECT_FALSE(torch::equal(ck.weights.lm_head, ck.weights.embeddings)) << "untied: its own lm_head.weight";
  expect_layer_shapes(ck);
  // Tensors come from each of the three shards.
  const auto s3 = st::File::open(model_dir("grouped") / "model-00003-of-00003.safetensors");
  EXPECT_TRUE(torch::equal(ck.weights.lm_head, s3.tensor("lm_head.weight")));
  EXPECT_TRUE(torch::equal(ck.weights.layers[2].out_proj_bias, s3.tensor("backbone.layers.2.mixer.out_proj.bias")));
  const auto s2 = st::File::open(model_dir("grouped") / "model-00002-of-00003.safetensors");
  EXPECT_TRUE(torch::equal(ck.weights.layers[1].in_proj_weight, s2.tensor("backbone.layers.1.mixer.in_proj.weight")));
}

TEST(Mamba2Checkpoint, LoadsLimitedFloat16WithoutConvBias) {
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(model_dir("limited"));
  EXPECT_FALSE(ck.config.use_conv_bias);
  EXPECT_FALSE(ck.config.use_bias);
  EXPECT_DOUBLE_EQ(ck.config.time_step_max, 0.05);
  EXPECT_EQ(ck.weights.embeddings.scalar_type(), torch::kFloat16);
  EXPECT_FALSE(ck.weights.lm_head.is_same(ck.weights.embeddings));
  expect_layer_shapes(ck);
  for (const auto& l : ck.weights.layers) {
    EXPECT_FALSE(l.conv1d_bias.defined());
    EXPECT_FALSE(l.in_proj_bias.defined());
    EXPECT_FALSE(l.out_proj_bias.defined());
  }
}

TEST(Mamba2Checkpoint, WeightsToKeepsTiesAndOptionalBiases) {
  const Mamba2Checkpoint tiny = Mamba2Checkpoint::load(model_dir("tiny"));
  const auto w32 = tiny.weights.to(torch::kFloat32, torch::kCPU);
  EXPECT_TRUE(w32.lm_head.is_same(w32.embeddings));
  const auto w64 = tiny.weights.to(torch::kFloat64, torch::kCPU);
  EXPECT_TRUE(w64.lm_head.is_same(w64.embeddings));
  EXPECT_EQ(w64.layers[0].in_proj_weight.scalar_type(), torch::kFloat64);
  EXPECT_EQ(w64.layers[0].A_log.scalar_type(), torch::kFloat64);

  const Mamba2Checkpoint limited = Mamba2Checkpoint::load(model_dir("limited"));
  const auto wbf = limited.weights.to(torch::kBFloat16, torch::kCPU);
  EXPECT_FALSE(wbf.layers[0].conv1d_bias.defined());
  EXPECT_EQ(wbf.layers[0].in_proj_weight.scalar_type(), torch::kBFloat16);
  // The scan parameters stay fp32 (mamba_ssm keeps them so).
  EXPECT_EQ(wbf.layers[0].dt_bias.scalar_type(), torch::kFloat32);
  EXPECT_EQ(wbf.layers[0].A_log.scalar_type(), torch::kFloat32);
  EXPECT_EQ(wbf.layers[0].D.scalar_type(), torch::kFloat32);
  EXPECT_FALSE(wbf.lm_head.is_same(wbf.embeddings));
}

// ---- Mamba2Checkpoint: the hash ------------------------------------------------------------------

fs::path copy_model(const std::string& name, const std::string& test) {
  const fs::path dst = scratch(test) / name;
  fs::copy(model_dir(name), dst, fs::copy_options::recursive);
  return dst;
}

void rewrite_config(const fs::path& model, const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json j = nlohmann::json::parse(read_text(model / "config.json"));
  edit(j);
  write_text(model / "config.json", j.dump(2));
}

void rewrite_weights(const fs::path& file, const std::function<void(Named&)>& edit) {
  const auto f = st::File::open(file);
  Named tensors;
  for (const auto& n : f.names()) tensors.emplace_back(n, f.tensor(n));
  edit(tensors);
  st::write(file, tensors, f.metadata());
}

TEST(Mamba2Checkpoint, HashIsStableAcrossLoadsAndCopies) {
  std::set<std::string> hashes;
  for (const std::string name : {"tiny", "grouped", "limited"}) {
    SCOPED_TRACE(name);
    const std::string h1 = Mamba2Checkpoint::load(model_dir(name)).hash;
    const std::string h2 = Mamba2Checkpoint::load(model_dir(name)).hash;
    EXPECT_EQ(h1, h2);
    EXPECT_TRUE(std::regex_match(h1, std::regex("[0-9a-f]{16}"))) << h1;
    // The hash is of the content, not the location.
    EXPECT_EQ(Mamba2Checkpoint::load(copy_model(name, "hash_copy_" + name)).hash, h1);
    hashes.insert(h1);
  }
  EXPECT_EQ(hashes.size(), 3u) << "different models, different hashes";
}

TEST(Mamba2Checkpoint, HashChangesWhenAWeightChanges) {
  const std::string original = Mamba2Checkpoint::load(model_dir("tiny")).hash;
  const fs::path model = copy_model("tiny", "hash_weight");
  const fs::path file = model / "model.safetensors";
  // Rewriting the same tensors (the layout may differ from the original file's) ...
  rewrite_weights(file, [](Named&) {});
  const std::string rewritten = Mamba2Checkpoint::load(model).hash;
  // ... then flipping one element of one weight by the smallest step.
  rewrite_weights(file, [](Named& t) {
    for (auto& [n, v] : t) {
      if (n == "backbone.layers.1.mixer.D") {
        auto bits = v.view(torch::kInt32);
        bits[2] += 1;
      }
    }
  });
  const Mamba2Checkpoint changed = Mamba2Checkpoint::load(model);
  EXPECT_NE(changed.hash, rewritten);
  EXPECT_NE(changed.hash, original);
  EXPECT_EQ(changed.hash, Mamba2Checkpoint::load(model).hash);

  // A weight in one shard of a sharded model.
  const std::string grouped = Mamba2Checkpoint::load(model_dir("grouped")).hash;
  const fs::path gmodel = copy_model("grouped", "hash_weight_sharded");
  rewrite_weights(gmodel / "model-00003-of-00003.safetensors", [](Named& t) {
    for (auto& [n, v] : t)
      if (n == "lm_head.weight") v = v.clone().index_put_({0, 0}, v[0][0] + 1);
  });
  EXPECT_NE(Mamba2Checkpoint::load(gmodel).hash, grouped);
}

TEST(Mamba2Checkpoint, HashCoversTheConfig) {
  const std::string original = Mamba2Checkpoint::load(model_dir("limited")).hash;
  const fs::path model = copy_model("limited", "hash_config");
  rewrite_config(model, [](nlohmann::json& j) { j["time_step_limit"][1] = 0.06; });
  const Mamba2Checkpoint changed = Mamba2Checkpoint::load(model);
  EXPECT_DOUBLE_EQ(changed.config.time_step_max, 0.06);
  EXPECT_NE(changed.hash, original);
}

// ---- Mamba2Checkpoint: errors and optional tensors ------------------------------------------------

TEST(Mamba2Checkpoint, TiedModelIgnoresAStoredLmHead) {
  const fs::path model = copy_model("tiny", "tied_stored_lm_head");
  rewrite_weights(model / "model.safetensors",
                  [](Named& t) { t.emplace_back("lm_head.weight", torch::ones({96, 32})); });
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(model);
  EXPECT_TRUE(ck.weights.lm_head.is_same(ck.weights.embeddings));
}

// A stored lm_head of the wrong shape in a tied model means the file does not match the config:
// rejected, not silently ignored.
TEST(Mamba2Checkpoint, TiedModelRejectsAWrongShapedStoredLmHead) {
  const fs::path model = copy_model("tiny", "tied_wrong_lm_head");
  rewrite_weights(model / "model.safetensors",
                  [](Named& t) { t.emplace_back("lm_head.weight", torch::ones({95, 32})); });
  const std::string m = input_error([&] { Mamba2Checkpoint::load(model); });
  EXPECT_THAT(m, HasSubstr((model / "model.safetensors").string()));
  EXPECT_THAT(m, HasSubstr("'lm_head.weight'"));
  EXPECT_THAT(m, HasSubstr("95x32"));
}

// A stored tensor the model does not use (a layer beyond num_hidden_layers, another
// architecture's name) is rejected, naming the file and the tensor.
TEST(Mamba2Checkpoint, UnknownStoredTensorIsRejected) {
  for (const std::string extra : {"backbone.layers.2.norm.weight", "model.decoder.weight"}) {
    SCOPED_TRACE(extra);
    const fs::path model = copy_model("tiny", "unknown_tensor");
    rewrite_weights(model / "model.safetensors", [&](Named& t) { t.emplace_back(extra, torch::ones({32})); });
    const std::string m = input_error([&] { Mamba2Checkpoint::load(model); });
    EXPECT_THAT(m, HasSubstr((model / "model.safetensors").string()));
    EXPECT_THAT(m, HasSubstr("'" + extra + "'"));
    EXPECT_THAT(m, HasSubstr("unknown tensors are rejected"));
  }
}

// A sharded index names its shards; each must be a file inside the model folder.
TEST(Mamba2Checkpoint, ShardOutsideTheModelFolderIsRejected) {
  const fs::path outside = scratch("shard_outside_target");
  fs::copy(model_dir("grouped") / "model-00001-of-00003.safetensors", outside / "stolen.safetensors");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"dotdot", "../../shard_outside_target/stolen.safetensors"},
      {"absolute", (outside / "stolen.safetensors").string()},
      {"symlink", "link.safetensors"},
  };
  for (const auto& [label, shard] : cases) {
    SCOPED_TRACE(label);
    const fs::path model = copy_model("grouped", "shard_outside_" + label);
    fs::create_symlink(outside / "stolen.safetensors", model / "link.safetensors");
    const fs::path index = model / "model.safetensors.index.json";
    nlohmann::json j = nlohmann::json::parse(read_text(index));
    j["weight_map"]["backbone.embeddings.weight"] = shard;
    write_text(index, j.dump(2));
    const std::string m = input_error([&] { Mamba2Checkpoint::load(model); });
    EXPECT_THAT(m, HasSubstr(index.string()));
    EXPECT_THAT(m, HasSubstr("backbone.embeddings.weight"));
    EXPECT_THAT(m, HasSubstr("outside the model folder"));
  }
  // A shard in a subfolder of the model folder is fine.
  const fs::path model = copy_model("grouped", "shard_in_subfolder");
  fs::create_directories(model / "shards");
  fs::rename(model / "model-00001-of-00003.safetensors", model / "shards" / "model-00001-of-00003.safetensors");
  const fs::path index = model / "model.safetensors.index.json";
  nlohmann::json j = nlohmann::json::parse(read_text(index));
  for (auto& [name, file] : j["weight_map"].items()) {
    if (file == "model-00001-of-00003.safetensors") file = "shards/model-00001-of-00003.safetensors";
  }
  write_text(index, j.dump(2));
  EXPECT_EQ(Mamba2Checkpoint::load(model).config.n_groups, Mamba2Checkpoint::load(model_dir("grouped")).config.n_groups);
}

TEST(Mamba2Checkpoint, UntiedModelWithoutLmHeadIsRejected) {
  const fs::path model = copy_model("tiny", "untied_no_lm_head");
  rewrite_config(model, [](nlohmann::json& j) { j["tie_word_embeddings"] = false; });
  const std::string m = input_error([&] { Mamba2Checkpoint::load(model); });
  EXPECT_THAT(m, HasSubstr((model / "model.safetensors").string()));
  EXPECT_THAT(m, HasSubstr("'lm_head.weight'"));
}

TEST(Mamba2Checkpoint, RequiredBiasMissingIsRejected) {
  const fs::path model = copy_model("tiny", "required_bias");
  rewrite_config(model, [](nlohmann::json& j) { j["use_bias"] = true; });
  const std::string m = input_error([&] { Mamba2Checkpoint::load(model); });
  EXPECT_THAT(m, HasSubstr("'backbone.layers.0.mixer.in_proj.bias'"));
}

// With use_conv_bias false, HF builds conv1d without a bias and drops a stored one; the engine must
// not apply it either.
TEST(Mamba2Checkpoint, StoredBiasIsIgnoredWhenTheConfigSaysNone) {
  const fs::path model = copy_model("tiny", "unwanted_bias");
  rewrite_config(model, [](nlohmann::json& j) { j["use_conv_bias"] = false; });
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(model);
  EXPECT_FALSE(ck.weights.layers[0].conv1d_bias.defined())
      << "use_conv_bias=false but the stored conv1d.bias was loaded (and will be applied)";
}

TEST(Mamba2Checkpoint, BadDirectoriesAreNamed) {
  const fs::path missing = scratch("bad_dirs") / "nope";
  EXPECT_THAT(input_error([&] { Mamba2Checkpoint::load(missing); }), HasSubstr(missing.string()));
  const fs::path empty = scratch("bad_dirs_empty");
  write_text(empty / "config.json", read_text(model_dir("tiny") / "config.json"));
  const std::string m = input_error([&] { Mamba2Checkpoint::load(empty); });
  EXPECT_THAT(m, HasSubstr(empty.string()));
  EXPECT_THAT(m, HasSubstr("model.safetensors"));
  const fs::path no_config = scratch("bad_dirs_no_config");
  fs::copy(model_dir("tiny") / "model.safetensors", no_config / "model.safetensors");
  EXPECT_THAT(input_error([&] { Mamba2Checkpoint::load(no_config); }), HasSubstr("config.json"));
}

TEST(Mamba2Checkpoint, ReadsAConfigWithBareInfinity) {
  const fs::path model = copy_model("tiny", "bare_infinity");
  std::string text = read_text(model / "config.json");
  const std::string from = "{\n      \"__float__\": \"Infinity\"\n    }";
  const auto pos = text.find(from);
  ASSERT_NE(pos, std::string::npos) << text;
  text.replace(pos, from.size(), "Infinity");
  write_text(model / "config.json", text);
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(model);
  EXPECT_EQ(ck.config.time_step_max, kInf);
}

// ---- Mamba2Checkpoint::first_layers -------------------------------------------------------------------

TEST(Mamba2Checkpoint, FirstLayersTruncates) {
  const Mamba2Checkpoint full = Mamba2Checkpoint::load(model_dir("grouped"));
  const Mamba2Checkpoint two = full.first_layers(2);
  EXPECT_EQ(two.config.num_hidden_layers, 2);
  ASSERT_EQ(two.weights.layers.size(), 2u);
  EXPECT_TRUE(two.weights.layers[1].in_proj_weight.is_same(full.weights.layers[1].in_proj_weight));
  EXPECT_TRUE(two.weights.embeddings.is_same(full.weights.embeddings));
  EXPECT_TRUE(two.weights.lm_head.is_same(full.weights.lm_head));
  EXPECT_NE(two.hash, full.hash);
  EXPECT_THAT(two.hash, HasSubstr(full.hash));
  EXPECT_NO_THROW(two.config.validate("first_layers"));
  // The original is untouched.
  EXPECT_EQ(full.config.num_hidden_layers, 3);
  EXPECT_EQ(full.weights.layers.size(), 3u);
  // Clamped to [1, num_hidden_layers].
  EXPECT_EQ(full.first_layers(1).weights.layers.size(), 1u);
  EXPECT_EQ(full.first_layers(0).config.num_hidden_layers, 1);
  EXPECT_EQ(full.first_layers(10).config.num_hidden_layers, 3);
  EXPECT_NE(full.first_layers(1).hash, two.hash);
  // Tied stays tied.
  const Mamba2Checkpoint tiny = Mamba2Checkpoint::load(model_dir("tiny")).first_layers(1);
  EXPECT_TRUE(tiny.weights.lm_head.is_same(tiny.weights.embeddings));
}

TEST(Mamba2Checkpoint, FirstLayersRunsAsTheSameLeadingLayers) {
  const Mamba2Checkpoint full = Mamba2Checkpoint::load(model_dir("grouped"));
  const Mamba2Checkpoint one = full.first_layers(1);
  mambadiff::ChunkedPath pf(full, torch::kFloat32, torch::kCPU), p1(one, torch::kFloat32, torch::kCPU);
  auto cf = pf.new_cache(2), c1 = p1.new_cache(2);
  EXPECT_EQ(c1.num_layers(), 1);
  const torch::Tensor tokens = torch::arange(10, torch::kInt64).view({2, 5});
  const auto of = pf.forward(tokens, cf);
  const auto o1 = p1.forward(tokens, c1);
  ASSERT_EQ(o1.layer_outputs.size(), 1u);
  ASSERT_EQ(o1.trace.size(), 1u);
  EXPECT_TRUE(torch::equal(o1.layer_outputs[0], of.layer_outputs[0]));
  EXPECT_TRUE(torch::equal(c1.ssm_states[0], cf.ssm_states[0]));
  EXPECT_EQ(o1.logits.sizes(), of.logits.sizes());
}

}  // namespace
