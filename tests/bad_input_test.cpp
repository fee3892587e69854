// Bad input through the real CLI (SPEC §6): every malformed model, config or scenario must end
// `mambadiff run` / `diff` with exit code 2, exactly one line on stderr naming the file and the
// key, tensor or op at fault, and no output file (nor a temporary one) left behind. Plus one valid
// run that must exit 0 and write the tensors SPEC §5 names.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <torch/cuda.h>

#include "engine/safetensors.h"
#include "tests/test_support.h"

#ifndef MAMBADIFF_BINARY
#error "MAMBADIFF_BINARY must be defined"
#endif

namespace {

namespace fs = std::filesystem;
namespace st = mambadiff::safetensors;
using ::testing::HasSubstr;
using Named = std::vector<std::pair<std::string, torch::Tensor>>;
using mambadiff::test_support::model_dir;
using mambadiff::test_support::read_text;
using mambadiff::test_support::source_dir;
using mambadiff::test_support::write_text;

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

struct CliResult {
  int exit_code = -1;
  std::string out;
  std::string err;
  std::vector<std::string> err_lines() const { return mambadiff::test_support::lines_of(err); }
};

// One directory per test, empty at the start; `out/` is where the run may (must not) write.
class BadInput : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = mambadiff::test_support::fresh_dir("bad_input", info->name());
    fs::create_directories(dir_ / "out");
  }

  fs::path dir() const { return dir_; }
  fs::path out_file() const { return dir_ / "out" / "result.safetensors"; }

  // `env`: NAME=VALUE assignments for the command, e.g. "MAMBADIFF_MEMORY_LIMIT_BYTES=1000".
  CliResult cli(const std::vector<std::string>& args, const std::string& env = "") const {
    std::string cmd = env + " " + shell_quote(MAMBADIFF_BINARY);
    for (const auto& a : args) cmd += " " + shell_quote(a);
    const fs::path so = dir_ / "cli.stdout", se = dir_ / "cli.stderr";
    cmd += " >" + shell_quote(so.string()) + " 2>" + shell_quote(se.string());
    const int status = std::system(cmd.c_str());
    CliResult r;
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.out = read_text(so);
    r.err = read_text(se);
    fs::remove(so);
    fs::remove(se);
    return r;
  }

  CliResult run_scenario(const fs::path& scenario, const std::string& path = "reference",
                         const std::string& env = "") const {
    return cli({"run", scenario.string(), "--path", path, "--out", out_file().string()}, env);
  }

  // A copy of an embedded model in this test's directory.
  fs::path copy_model(const std::string& name) const {
    const fs::path dst = dir_ / ("model_" + name);
    fs::copy(model_dir(name), dst, fs::copy_options::recursive);
    return dst;
  }

  // A scenario file in this test's directory.
  fs::path scenario(const std::vector<nlohmann::json>& ops, const fs::path& model, const std::string& name = "scenario.json",
                    const std::string& dtype = "float32") const {
    nlohmann::json j = {{"format", "mambadiff.scenario.v1"},
                        {"model", fs::absolute(model).string()},
                        {"dtype", dtype},
                        {"ops", nlohmann::json(ops)}};
    const fs::path p = dir_ / name;
    write_text(p, j.dump(1));
    return p;
  }

  // Files anywhere in the test directory whose name says they are temporaries of a write.
  std::vector<std::string> temp_files() const {
    std::vector<std::string> found;
    for (const auto& e : fs::recursive_directory_iterator(dir_)) {
      const std::string n = e.path().filename().string();
      if (n.find(".tmp") != std::string::npos) found.push_back(e.path().string());
    }
    return found;
  }

  // The contract of a rejected input: exit 2, one stderr line holding every `needles` substring,
  // no output and no temporary file.
  void expect_rejected(const CliResult& r, const std::vector<std::string>& needles) const {
    EXPECT_EQ(r.exit_code, 2) << "stderr: " << r.err << "\nstdout: " << r.out;
    RecordProperty("stderr", r.err);
    const auto lines = r.err_lines();
    EXPECT_EQ(lines.size(), 1u) << "stderr must be exactly one line, got:\n" << r.err;
    EXPECT_FALSE(r.err.empty());
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    for (const auto& n : needles) EXPECT_THAT(r.err, HasSubstr(n)) << "the reason must name " << n;
    EXPECT_FALSE(fs::exists(out_file())) << "no output file may be left behind";
    EXPECT_TRUE(fs::is_empty(dir_ / "out")) << "the output directory must stay empty";
    EXPECT_EQ(fmt::format("{}", fmt::join(temp_files(), " ")), "") << "no temporary file may be left behind";
  }

  // Rewrites <model>/model.safetensors through `edit` (which gets every tensor, in name order).
  static void rewrite_weights(const fs::path& model, const std::function<void(Named&)>& edit) {
    const fs::path file = model / "model.safetensors";
    const auto f = st::File::open(file);
    Named tensors;
    for (const auto& n : f.names()) tensors.emplace_back(n, f.tensor(n));
    edit(tensors);
    st::write(file, tensors, f.metadata());
  }

  fs::path dir_;
};

nlohmann::json fwd(const std::vector<std::vector<int64_t>>& tokens) {
  return {{"op", "forward"}, {"tokens", tokens}};
}

nlohmann::json inject(int64_t layer, const std::string& file, const std::string& tensor) {
  return {{"op", "inject"}, {"layer", layer}, {"delta", {{"file", file}, {"tensor", tensor}}}};
}

const std::vector<std::vector<int64_t>> kTokens = {{3, 1, 4, 1, 5}, {9, 2, 6, 5, 3}};

// ---- the model: weights ----------------------------------------------------------------------

TEST_F(BadInput, MissingTensor) {
  const fs::path model = copy_model("tiny");
  rewrite_weights(model, [](Named& t) {
    t.erase(std::remove_if(t.begin(), t.end(), [](const auto& p) { return p.first == "backbone.layers.1.mixer.dt_bias"; }),
            t.end());
  });
  expect_rejected(run_scenario(scenario({fwd(kTokens)}, model)),
                  {(model / "model.safetensors").string(), "'backbone.layers.1.mixer.dt_bias'", "missing"});
}

TEST_F(BadInput, MissingTensorInShardedModel) {
  // The grouped model is sharded: the index lists a tensor that its shard no longer holds.
  const fs::path model = copy_model("grouped");
  const fs::path shard = model / "model-00002-of-00003.safetensors";
  const auto f = st::File::open(shard);
  Named kept;
  for (const auto& n : f.names())
    if (n != "backbone.layers.1.mixer.in_proj.weight") kept.emplace_back(n, f.tensor(n));
  ASSERT_EQ(kept.size() + 1, f.names().size()) << "the shard should hold backbone.layers.1.mixer.in_proj.weight";
  st::write(shard, kept, f.metadata());
  expect_rejected(run_scenario(scenario({fwd(kTokens)}, model)),
                  {shard.string(), "'backbone.layers.1.mixer.in_proj.weight'", "missing"});
}

TEST_F(BadInput, MissingTensorInShardIndex) {
  const fs::path model = copy_model("grouped");
  const fs::path index = model / "model.safetensors.index.json";
  nlohmann::json j = nlohmann::json::parse(read_text(index));
  ASSERT_EQ(j["weight_map"].erase("lm_head.weight"), 1u);
  write_text(index, j.dump(2));
  expect_rejected(run_scenario(scenario({fwd(kTokens)}, model)), {index.string(), "'lm_head.weight'", "missing"});
}

TEST_F(BadInput, TensorOfWrongShape) {
  const fs::path model = copy_model("tiny");
  rewrite_weights(model, [](Named& t) {
    for (auto& [n, v] : t)
      if (n == "backbone.layers.0.mixer.D") v = torch::ones({5}, torch::kFloat32);
  });
  expect_rejected(run_scenario(scenario({fwd(kTokens)}, model)),
                  {(model / "model.safetensors").string(), "'backbone.layers.0.mixer.D'", "shape"});
}

TEST_F(BadInput, TensorOfWrongDtype) {
  const fs::path model = copy_model("tiny");
  rewrite_weights(model, [](Named& t) {
    for (auto& [n, v] : t)
      if (n == "backbone.layers.0.mixer.A_log") v = torch::zeros({4}, torch::kInt32);
  });
  expect_rejected(run_scenario(scenario({fwd(kTokens)}, model)),
                  {(model / "model.safetensors").string(), "'backbone.layers.0.mixer.A_log'", "dtype", "I32"});
}

TEST_F(BadInput, TruncatedSafetensorsFile) {
  const fs::path model = copy_model("tiny");
  rewrite_weights(model, [](Named&) {});  // rewritten in name order: backbone.norm_f.weight is last
  const fs::path file = model / "model.safetensors";
  fs::resize_file(file, fs::file_size(file) - 16);
  expect_rejected(run_scenario(scenario({fwd(kTokens)}, model)),
                  {file.string(), "'backbone.norm_f.weight'"});
}

TEST_F(BadInput, FileShorterThanTheHeaderLength) {
  const fs::path model = copy_model("tiny");
  const fs::path file = model / "model.safetensors";
  fs::resize_file(file, 5);
  expect_rejected(run_scenario(scenario({fwd(kTokens)}, model)), {file.string(), "truncated"});
}

TEST_F(BadInput, HeaderLengthBeyondTheFile) {
  const fs::path model = copy_model("tiny");
  const fs::path file = model / "model.safetensors";
  std::string bytes = read_text(file);
  const uint64_t huge = static_cast<uint64_t>(bytes.size()) * 4;
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((huge >> (8 * i)) & 0xff);
  write_text(file, bytes);
  expect_rejected(run_scenario(scenario({fwd(kTokens)}, model)), {file.string(), "header length"});
}

TEST_F(BadInput, NonJsonHeader) {
  const fs::path model = copy_model("tiny");
  const fs::path file = model / "model.safetensors";
  std::string bytes = read_text(file);
  // Same length, so only the header's content is wrong; a newline inside too, to test the
  // message stays on one line.
  const std::string junk = "{\"backbone.embeddings.weight\": \n not json at all";
  ASSERT_GT(bytes.size(), 8 + junk.size());
  bytes.replace(8, junk.size(), junk);
  write_text(file, bytes);
  expect_rejected(run_scenario(scenario({fwd(kTokens)}, model)), {file.string(), "JSON"});
}

// ---- the model: config -----------------------------------------------------------------------

void edit_config(const fs::path& model, const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json j = nlohmann::json::parse(read_text(model / "config.json"));
  edit(j);
  write_text(model / "config.json", j.dump(2));
}

TEST_F(BadInput, ConfigHiddenTimesExpandIsNotHeadsTimesHeadDim) {
  const fs::path model = copy_model("tiny");
  edit_config(model, [](nlohmann::json& j) { j["num_heads"] = 5; });  // 32*2 != 5*16
  expect_rejected(run_scenario(scenario({fwd(kTokens)}, model)),
                  {(model / "config.json").string(), "hidden_size", "expand", "num_heads", "head_dim"});
}

TEST_F(BadInput, ConfigHeadsNotDivisibleByGroups) {
  const fs::path model = copy_model("tiny");
  edit_config(model, [](nlohmann::json& j) { j["n_groups"] = 3; });  // 4 heads, 3 groups
  expect_rejected(run_scenario(scenario({fwd(kTokens)}, model)),
                  {(model / "config.json").string(), "num_heads", "n_groups"});
}

TEST_F(BadInput, ConfigMissingKey) {
  const fs::path model = copy_model("tiny");
  edit_config(model, [](nlohmann::json& j) { j.erase("state_size"); });
  expect_rejected(run_scenario(scenario({fwd(kTokens)}, model)),
                  {(model / "config.json").string(), "'state_size'"});
}

// ---- the scenario ----------------------------------------------------------------------------

TEST_F(BadInput, TokenIdAtVocabSize) {
  // tiny's vocab_size is 96: id 96 is one past the last.
  const fs::path s = scenario({fwd(kTokens), fwd({{7}, {96}})}, model_dir("tiny"));
  expect_rejected(run_scenario(s), {s.string(), "op 1", "forward", "96", "vocab_size"});
}

TEST_F(BadInput, NegativeTokenId) {
  const fs::path s = scenario({fwd({{3, -1}, {4, 5}})}, model_dir("tiny"));
  expect_rejected(run_scenario(s), {s.string(), "op 0", "-1", "vocab_size"});
}

TEST_F(BadInput, BatchSizesDisagreeBetweenOps) {
  const fs::path s = scenario({fwd(kTokens), {{"op", "snapshot"}, {"name", "a"}}, fwd({{5}})}, model_dir("tiny"));
  expect_rejected(run_scenario(s), {s.string(), "op 2", "batch size"});
}

TEST_F(BadInput, RaggedTokenRows) {
  const fs::path s = scenario({fwd({{1, 2, 3}, {4, 5}})}, model_dir("tiny"));
  expect_rejected(run_scenario(s), {s.string(), "op 0", "'tokens'", "row 1"});
}

TEST_F(BadInput, InjectWithWrongShape) {
  st::write(dir() / "d.safetensors", {{"delta.bad", torch::zeros({4, 16, 15})}});  // N is 16
  const fs::path s = scenario({fwd(kTokens), inject(1, "d.safetensors", "delta.bad"), fwd({{1}, {2}})},
                              model_dir("tiny"));
  expect_rejected(run_scenario(s), {s.string(), "op 1", "inject", "layer 1", "4, 16, 15"});
}

TEST_F(BadInput, InjectWithWrongBatch) {
  st::write(dir() / "d.safetensors", {{"delta.bad", torch::zeros({3, 4, 16, 16})}});  // B is 2
  const fs::path s = scenario({fwd(kTokens), inject(0, "d.safetensors", "delta.bad")}, model_dir("tiny"));
  expect_rejected(run_scenario(s), {s.string(), "op 1", "inject", "batch size"});
}

TEST_F(BadInput, InjectWithLayerOutOfRange) {
  st::write(dir() / "d.safetensors", {{"delta", torch::zeros({4, 16, 16})}});
  const fs::path s = scenario({fwd(kTokens), inject(2, "d.safetensors", "delta")}, model_dir("tiny"));  // 2 layers
  expect_rejected(run_scenario(s), {s.string(), "op 1", "inject", "layer 2", "out of range"});
}

TEST_F(BadInput, InjectWithNegativeLayer) {
  st::write(dir() / "d.safetensors", {{"delta", torch::zeros({4, 16, 16})}});
  const fs::path s = scenario({fwd(kTokens), inject(-1, "d.safetensors", "delta")}, model_dir("tiny"));
  expect_rejected(run_scenario(s), {s.string(), "op 1", "layer -1", "out of range"});
}

TEST_F(BadInput, InjectOfMissingDeltaTensor) {
  st::write(dir() / "d.safetensors", {{"delta", torch::zeros({4, 16, 16})}});
  const fs::path s = scenario({fwd(kTokens), inject(0, "d.safetensors", "delta.7")}, model_dir("tiny"));
  expect_rejected(run_scenario(s), {(dir() / "d.safetensors").string(), "'delta.7'", "op 1"});
}

TEST_F(BadInput, RestoreOfUnknownSnapshot) {
  const fs::path s = scenario({fwd(kTokens), {{"op", "snapshot"}, {"name", "s0"}}, {{"op", "restore"}, {"name", "s1"}}},
                              model_dir("tiny"));
  expect_rejected(run_scenario(s), {s.string(), "op 2", "restore", "'s1'"});
}

TEST_F(BadInput, RestoreBeforeTheSnapshotIsTaken) {
  const fs::path s = scenario({fwd(kTokens), {{"op", "restore"}, {"name", "s0"}}, {{"op", "snapshot"}, {"name", "s0"}}},
                              model_dir("tiny"));
  expect_rejected(run_scenario(s), {s.string(), "op 1", "restore", "'s0'"});
}

TEST_F(BadInput, ScenarioNotJson) {
  const fs::path s = dir() / "scenario.json";
  write_text(s, "{\"format\": \"mambadiff.scenario.v1\",\n  \"ops\": [ oops\n]\n");
  expect_rejected(run_scenario(s), {s.string(), "JSON"});
}

TEST_F(BadInput, ScenarioFileMissing) {
  const fs::path s = dir() / "no_such_scenario.json";
  expect_rejected(run_scenario(s), {s.string()});
}

TEST_F(BadInput, UnknownOp) {
  const fs::path s = scenario({fwd(kTokens), {{"op", "frobnicate"}}}, model_dir("tiny"));
  expect_rejected(run_scenario(s), {s.string(), "op 1", "'frobnicate'"});
}

TEST_F(BadInput, WrongFormat) {
  nlohmann::json j = {{"format", "mambadiff.scenario.v0"}, {"model", model_dir("tiny").string()}, {"ops", nlohmann::json::array({fwd(kTokens)})}};
  const fs::path s = dir() / "scenario.json";
  write_text(s, j.dump());
  expect_rejected(run_scenario(s), {s.string(), "'format'"});
}

TEST_F(BadInput, UnknownDtype) {
  const fs::path s = scenario({fwd(kTokens)}, model_dir("tiny"), "scenario.json", "float8");
  expect_rejected(run_scenario(s), {s.string(), "'dtype'", "float8"});
}

TEST_F(BadInput, ModelDirectoryMissing) {
  const fs::path s = scenario({fwd(kTokens)}, dir() / "no_such_model");
  expect_rejected(run_scenario(s), {(dir() / "no_such_model").string()});
}

TEST_F(BadInput, UnknownPathName) {
  const fs::path s = scenario({fwd(kTokens)}, model_dir("tiny"));
  expect_rejected(run_scenario(s, "no-such-path"), {"'no-such-path'", "path"});
}

TEST_F(BadInput, DiffWithOnePath) {
  const fs::path s = scenario({fwd(kTokens)}, model_dir("tiny"));
  const fs::path json = dir() / "out" / "verdict.json";
  const CliResult r = cli({"diff", s.string(), "--paths", "reference", "--json", json.string()});
  expect_rejected(r, {"--paths", "'reference'"});
  EXPECT_FALSE(fs::exists(json));
}

TEST_F(BadInput, DiffWithAnUnknownSecondPath) {
  const fs::path s = scenario({fwd(kTokens)}, model_dir("tiny"));
  const fs::path json = dir() / "out" / "verdict.json";
  expect_rejected(cli({"diff", s.string(), "--paths", "reference,bogus", "--json", json.string()}), {"'bogus'"});
}

TEST_F(BadInput, RunWithoutOut) {
  const fs::path s = scenario({fwd(kTokens)}, model_dir("tiny"));
  const CliResult r = cli({"run", s.string(), "--path", "reference"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("--out"));
}

TEST_F(BadInput, CheckWithZeroThreads) {
  const CliResult r = cli({"check", "--threads", "0"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("--threads"));
}

// A path that cannot run here is a usage answer (exit 2), never a crash: `cuda` without a device
// or without the kernels built.
TEST_F(BadInput, OptimizeOnAnUnavailablePath) {
  if (torch::cuda::is_available()) GTEST_SKIP() << "a CUDA device is present: the cuda path is available";
  const CliResult r = cli({"optimize", "--model", model_dir("tiny").string(), "--prompt-tokens", "3,1,4",
                           "--target", "7", "--layers", "1", "--path", "cuda", "--out", out_file().string()});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("cuda"));
  EXPECT_FALSE(fs::exists(out_file()));
}

// ---- a valid run -----------------------------------------------------------------------------

TEST_F(BadInput, ValidRunWritesTheSpecTensors) {
  // B=2; forward ops at 0 (T=5), 3 (T=1) and 5 (T=3): prefill, step, continue.
  st::write(dir() / "d.safetensors", {{"delta", torch::full({4, 16, 16}, 0.01)}});
  const fs::path s =
      scenario({fwd(kTokens), {{"op", "snapshot"}, {"name", "s"}}, inject(1, "d.safetensors", "delta"),
                fwd({{7}, {8}}), {{"op", "restore"}, {"name", "s"}}, fwd({{1, 2, 3}, {4, 5, 6}})},
               model_dir("tiny"));
  for (const std::string path : {"reference", "chunked"}) {
    SCOPED_TRACE(path);
    fs::remove(out_file());
    const CliResult r = run_scenario(s, path);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(r.err.empty()) << r.err;
    ASSERT_TRUE(fs::exists(out_file()));
    EXPECT_EQ(fmt::format("{}", fmt::join(temp_files(), " ")), "") << "no temporary file may be left behind";

    const auto f = st::File::open(out_file());
    const int64_t B = 2, V = 96, H = 4, P = 16, N = 16, C = 96, K = 4;
    std::set<std::string> expected;
    const std::vector<std::pair<int, int64_t>> forwards = {{0, 5}, {3, 1}, {5, 3}};
    for (const auto& [op, T] : forwards) {
      const std::string name = fmt::format("op.{}.logits", op);
      expected.insert(name);
      ASSERT_TRUE(f.contains(name)) << name;
      const auto& e = f.entry(name);
      EXPECT_EQ(e.dtype, torch::kFloat32) << name;
      EXPECT_EQ(e.shape, (std::vector<int64_t>{B, T, V})) << name;
      EXPECT_TRUE(torch::isfinite(f.tensor(name)).all().item<bool>()) << name;
    }
    for (int l = 0; l < 2; ++l) {
      const std::string ssm = fmt::format("cache.ssm_states.{}", l), conv = fmt::format("cache.conv_states.{}", l);
      expected.insert(ssm);
      expected.insert(conv);
      ASSERT_TRUE(f.contains(ssm) && f.contains(conv)) << l;
      EXPECT_EQ(f.entry(ssm).dtype, torch::kFloat32);
      EXPECT_EQ(f.entry(ssm).shape, (std::vector<int64_t>{B, H, P, N}));
      EXPECT_EQ(f.entry(conv).dtype, torch::kFloat32);
      EXPECT_EQ(f.entry(conv).shape, (std::vector<int64_t>{B, C, K}));
    }
    expected.insert("cache.seqlen_offset");
    ASSERT_TRUE(f.contains("cache.seqlen_offset"));
    EXPECT_EQ(f.entry("cache.seqlen_offset").dtype, torch::kInt64);
    EXPECT_EQ(f.entry("cache.seqlen_offset").shape, (std::vector<int64_t>{1}));
    // 5 tokens, then 1 (undone by the restore), then 3.
    EXPECT_EQ(f.tensor("cache.seqlen_offset").item<int64_t>(), 8);
    const auto names = f.names();
    EXPECT_EQ(std::set<std::string>(names.begin(), names.end()), expected);

    ASSERT_TRUE(f.metadata().count("dispatch_trace"));
    nlohmann::json trace;
    ASSERT_NO_THROW(trace = nlohmann::json::parse(f.metadata().at("dispatch_trace")));
    ASSERT_TRUE(trace.is_array());
    ASSERT_EQ(trace.size(), 6u) << trace.dump();  // 3 forward ops x 2 layers
    const char* branches[] = {"prefill", "step", "continue"};
    for (size_t i = 0; i < trace.size(); ++i) {
      EXPECT_EQ(trace[i].at("op").get<int>(), forwards[i / 2].first) << trace[i];
      EXPECT_EQ(trace[i].at("layer").get<int>(), static_cast<int>(i % 2)) << trace[i];
      EXPECT_EQ(trace[i].at("branch").get<std::string>(), branches[i / 2]) << trace[i];
      EXPECT_TRUE(trace[i].at("kernels").is_string());
    }
  }
}

TEST_F(BadInput, ValidRunOfAnEmbeddedScenario) {
  // The checked-in scenarios use relative model paths; the output still is float32.
  const fs::path s = source_dir() / "corpus" / "scenarios" / "grouped" / "continue.json";
  const CliResult r = run_scenario(s, "chunked");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto f = st::File::open(out_file());
  for (const auto& n : f.names()) {
    if (n == "cache.seqlen_offset") continue;
    EXPECT_EQ(f.entry(n).dtype, torch::kFloat32) << n;
  }
  EXPECT_GT(f.tensor("cache.seqlen_offset").item<int64_t>(), 0);
}

// ---- runs that would need absurd memory: rejected before anything is allocated -------------------

TEST_F(BadInput, ChunkSizeThatWouldNeedAbsurdMemory) {
  const fs::path model = copy_model("tiny");
  nlohmann::json config = nlohmann::json::parse(read_text(model / "config.json"));
  config["chunk_size"] = 1000000000;  // every forward padded to 10^9 tokens
  write_text(model / "config.json", config.dump(2));
  const fs::path s = scenario({fwd(kTokens)}, model);
  expect_rejected(run_scenario(s, "chunked"), {s.string(), "op 0", "chunk_size=1000000000"});
}

TEST_F(BadInput, RunOverTheMemoryLimitIsRejected) {
  // A limit far below the embedded model's run stands in for a token list of millions.
  const fs::path s = scenario({fwd(kTokens)}, model_dir("tiny"));
  expect_rejected(run_scenario(s, "chunked", "MAMBADIFF_MEMORY_LIMIT_BYTES=1000"),
                  {s.string(), "op 0", "MAMBADIFF_MEMORY_LIMIT_BYTES"});
  expect_rejected(cli({"generate", "--prompt-tokens", "3,1,4", "--tokens", "4"}, "MAMBADIFF_MEMORY_LIMIT_BYTES=1000"),
                  {"generate", "MAMBADIFF_MEMORY_LIMIT_BYTES"});
  expect_rejected(run_scenario(s, "chunked", "MAMBADIFF_MEMORY_LIMIT_BYTES=lots"),
                  {"MAMBADIFF_MEMORY_LIMIT_BYTES", "positive integer"});
}

}  // namespace
