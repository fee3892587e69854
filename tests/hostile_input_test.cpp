// The hostile-input suite (issue 14): every command (run, diff, check, repro, reduce, mutants,
// optimize, generate) meets each class of hostile input, and each must end the way SPEC §6
// promises: exit 2 and ONE line on stderr naming the file, key, tensor or option at fault (exit 1
// for a real divergence), no crash, no hang, and nothing written to the output folder (nor a
// temporary file left anywhere).
//
// Classes: non-finite weights and deltas; NaN or infinities in compared results; nothing to
// check; a scenario without a forward op; JSON nested 10^5 deep, numbers outside double range,
// values of the wrong type, and values too long to quote; inputs that are not regular files (a
// FIFO must not hang); options outside their domain; a Δ that becomes NaN in the optimizer;
// outputs that are devices or FIFOs (written through, never replaced); repro's observed tensors
// and tolerances; Ctrl-C in generate and reduce.
//
// To add a case: pick the class's TEST_F, add one line to its table of commands.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fmt/format.h>
#include <functional>
#include <regex>
#include <sstream>
#include <torch/cuda.h>
#include <fmt/ranges.h>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "engine/checkpoint.h"
#include "engine/input_file.h"
#include "engine/output_file.h"
#include "engine/safetensors.h"
#include "optimizer/real_cache_optimizer.h"
#include "tests/test_support.h"

namespace {

namespace fs = std::filesystem;
namespace st = mambadiff::safetensors;
using ::testing::HasSubstr;
using mambadiff::test_support::model_dir;
using mambadiff::test_support::read_text;
using mambadiff::test_support::source_dir;
using mambadiff::test_support::write_text;
using Args = std::vector<std::string>;
using Named = std::vector<std::pair<std::string, torch::Tensor>>;

// A command that neither finishes nor fails in this time hangs (the FIFO class); the slowest
// honest command here (reduce's first replay, check on one scenario) takes a few seconds.
constexpr int kTimeoutSeconds = 60;

struct Result {
  int exit_code = -1;
  bool killed = false;  // by a signal (a crash, or the timeout)
  std::string out, err;
  std::vector<std::string> err_lines() const { return mambadiff::test_support::lines_of(err); }
};

class Hostile : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = mambadiff::test_support::fresh_dir("hostile", info->name());
    fs::create_directories(out());
    tiny_ = copy_model("tiny");
  }

  fs::path dir() const { return dir_; }
  fs::path out() const { return dir_ / "out"; }
  fs::path tiny() const { return tiny_; }

  // Runs mambadiff with `args`. With `interrupt_after` > 0 it sends SIGINT that many seconds after
  // the start, or, with `interrupt_when` too, once stdout holds that text (polled every 50 ms).
  Result cli(const Args& args, double interrupt_after = 0, const std::string& interrupt_when = "") const {
    const fs::path so = dir_ / "cli.stdout", se = dir_ / "cli.stderr";
    const pid_t pid = ::fork();
    if (pid == 0) {
      const int o = ::open(so.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int e = ::open(se.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(o, 1);
      ::dup2(e, 2);
      ::alarm(kTimeoutSeconds);  // SIGALRM kills a hung command
      std::vector<char*> argv{const_cast<char*>(MAMBADIFF_BINARY)};
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(MAMBADIFF_BINARY, argv.data());
      ::_exit(127);
    }
    int status = 0;
    bool exited = false;
    if (interrupt_after > 0) {
      std::this_thread::sleep_for(std::chrono::duration<double>(interrupt_after));
      while (!interrupt_when.empty() && read_text(so).find(interrupt_when) == std::string::npos) {
        if (::waitpid(pid, &status, WNOHANG) == pid) {
          exited = true;
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      if (!exited) ::kill(pid, SIGINT);
    }
    if (!exited) ::waitpid(pid, &status, 0);
    Result r;
    r.killed = WIFSIGNALED(status);
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.out = read_text(so);
    r.err = read_text(se);
    fs::remove(so);
    fs::remove(se);
    return r;
  }

  // Files anywhere under the test folder whose name says they are temporaries of a write.
  std::vector<std::string> temp_files() const {
    std::vector<std::string> found;
    for (const auto& e : fs::recursive_directory_iterator(dir_)) {
      if (e.path().filename().string().find(".tmp") != std::string::npos) found.push_back(e.path().string());
    }
    return found;
  }

  // The contract of a rejected input: exit `code`, one stderr line holding every needle, the output
  // folder empty, no temporary file.
  void expect_rejected(const Result& r, const std::vector<std::string>& needles, int code = 2) const {
    EXPECT_FALSE(r.killed) << "killed (crash or hang): " << r.err;
    EXPECT_EQ(r.exit_code, code) << "stderr: " << r.err << "\nstdout: " << r.out;
    EXPECT_EQ(r.err_lines().size(), 1u) << "stderr must be exactly one line, got:\n" << r.err;
    EXPECT_LE(r.err.size(), 600u) << "a one-line error, not a dump: " << r.err.substr(0, 600);
    for (const auto& n : needles) EXPECT_THAT(r.err, HasSubstr(n)) << "the reason must name " << n;
    EXPECT_TRUE(fs::is_empty(out())) << "the output folder must stay empty";
    EXPECT_EQ(fmt::format("{}", fmt::join(temp_files(), " ")), "") << "no temporary file may be left behind";
  }

  fs::path copy_model(const std::string& name) const {
    const fs::path dst = dir_ / ("model_" + name);
    fs::copy(model_dir(name), dst, fs::copy_options::recursive);
    return dst;
  }

  fs::path scenario(const nlohmann::json& ops, const fs::path& model, const std::string& name = "scenario.json") const {
    const nlohmann::json j = {
        {"format", "mambadiff.scenario.v1"}, {"model", fs::absolute(model).string()}, {"dtype", "float32"}, {"ops", ops}};
    write_text(dir_ / name, j.dump(1));
    return dir_ / name;
  }
  fs::path good_scenario() const { return scenario(nlohmann::json::array({fwd()}), tiny_); }

  static nlohmann::json fwd() { return {{"op", "forward"}, {"tokens", {{3, 1, 4, 1, 5}, {9, 2, 6, 5, 3}}}}; }

  // A copy of a corpus divergence case (tiny model, a mutant against the reference) whose
  // scenario runs on this test's copy of tiny.
  fs::path copy_case() const {
    const fs::path dst = dir_ / "case";
    fs::copy(source_dir() / "corpus/regressions/continue-as-prefill", dst, fs::copy_options::recursive);
    edit_json(dst / "scenario.json", [&](nlohmann::json& j) { j["model"] = fs::absolute(tiny_).string(); });
    return dst;
  }

  static void edit_json(const fs::path& file, const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = nlohmann::json::parse(read_text(file));
    edit(j);
    write_text(file, j.dump(1));
  }

  // Rewrites <model>/model.safetensors through `edit`.
  static void edit_weights(const fs::path& model, const std::function<void(Named&)>& edit) {
    const fs::path file = model / "model.safetensors";
    const auto f = st::File::open(file);
    Named tensors;
    for (const auto& n : f.names()) tensors.emplace_back(n, f.tensor(n));
    edit(tensors);
    st::write(file, tensors, f.metadata());
  }

  // A Δ file for tiny (delta.0: [1, H=4, P=16, N=16]) with `value` at one element.
  fs::path delta_file(double value, const std::string& name = "delta.safetensors") const {
    torch::Tensor d = torch::zeros({1, 4, 16, 16});
    d[0][1][2][3] = value;
    st::write(dir_ / name, {{"delta.0", d}});
    return dir_ / name;
  }

  fs::path fifo(const std::string& name) const {
    const fs::path p = dir_ / name;
    fs::remove(p);
    EXPECT_EQ(::mkfifo(p.c_str(), 0644), 0) << p;
    return p;
  }

  fs::path dir_, tiny_;
};

// ---- non-finite weights and deltas: input errors naming the tensor --------------------------

TEST_F(Hostile, NonFiniteWeightsAreAnInputErrorNamingTheTensorInEveryCommand) {
  const fs::path nan_model = copy_model("bytes");  // optimize/generate need a byte model for text; ids work anywhere
  edit_weights(tiny(), [](Named& t) {
    for (auto& [name, w] : t)
      if (name == "backbone.layers.1.mixer.D") w[2] = std::numeric_limits<float>::quiet_NaN();
  });
  edit_weights(nan_model, [](Named& t) {
    for (auto& [name, w] : t)
      if (name == "backbone.norm_f.weight") w[0] = std::numeric_limits<float>::infinity();
  });
  const std::string weights = (tiny() / "model.safetensors").string(), tensor = "'backbone.layers.1.mixer.D'";
  const fs::path s = good_scenario();
  const fs::path c = copy_case();
  const std::vector<std::pair<Args, std::vector<std::string>>> commands = {
      {{"run", s.string(), "--out", (out() / "r.safetensors").string()}, {weights, tensor, "NaN"}},
      {{"diff", s.string(), "--paths", "chunked,reference"}, {weights, tensor}},
      {{"check", "--model", tiny().string(), "--paths", "chunked,reference", "--scenario", "prefill_1"}, {weights, tensor}},
      {{"mutants", "--model", tiny().string(), "--mutant", "continue-as-prefill"}, {weights, tensor}},
      {{"repro", c.string()}, {weights, tensor}},
      {{"reduce", c.string(), "-o", (out() / "reduced").string()}, {weights, tensor}},
      {{"optimize", "--model", nan_model.string(), "--prompt-tokens", "65,66", "--target", "67", "--out",
        (out() / "d.safetensors").string()},
       {(nan_model / "model.safetensors").string(), "'backbone.norm_f.weight'", "infinite"}},
      {{"generate", "--model", nan_model.string(), "--prompt-tokens", "65,66"}, {"'backbone.norm_f.weight'"}},
  };
  for (const auto& [args, needles] : commands) {
    SCOPED_TRACE(args[0]);
    expect_rejected(cli(args), needles);
  }
}

TEST_F(Hostile, NonFiniteInjectedDeltaIsAnInputErrorNamingFileAndTensor) {
  const fs::path delta = delta_file(std::numeric_limits<double>::quiet_NaN());
  const nlohmann::json inject = {{"op", "inject"}, {"layer", 0}, {"delta", {{"file", delta.filename()}, {"tensor", "delta.0"}}}};
  const fs::path s = scenario(nlohmann::json::array({fwd(), inject, fwd()}), tiny());
  expect_rejected(cli({"run", s.string(), "--out", (out() / "r.safetensors").string()}), {delta.string(), "'delta.0'", "NaN"});
  expect_rejected(cli({"diff", s.string(), "--paths", "chunked,reference"}), {delta.string(), "'delta.0'"});
  const fs::path inf_delta = delta_file(-std::numeric_limits<double>::infinity(), "inf.safetensors");
  expect_rejected(cli({"generate", "--model", tiny().string(), "--prompt-tokens", "3,4", "--delta", inf_delta.string()}),
                  {inf_delta.string(), "'delta.0'", "infinite"});
}

// ---- NaN and infinities in compared results: a divergence (exit 1), never "agree" -------------

TEST_F(Hostile, InfinityOrNanInComparedResultsIsADivergence) {
  const fs::path s = good_scenario();
  const fs::path result = out() / "r.safetensors";
  ASSERT_EQ(cli({"run", s.string(), "--path", "chunked", "--out", result.string()}).exit_code, 0);
  for (const double planted : {std::numeric_limits<double>::infinity(), std::numeric_limits<double>::quiet_NaN()}) {
    SCOPED_TRACE(planted);
    const auto f = st::File::open(result);
    Named tensors;
    for (const auto& n : f.names()) tensors.emplace_back(n, f.tensor(n));
    for (auto& [name, t] : tensors)
      if (name == "op.0.logits") t[0][2][7] = planted;  // the same value on both sides of the diff
    const fs::path planted_file = dir() / "planted.safetensors";
    st::write(planted_file, tensors, f.metadata());
    const std::string file = "file:" + planted_file.string();
    const Result r = cli({"diff", s.string(), "--paths", file + "," + file});
    EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
    EXPECT_THAT(r.out, HasSubstr("DIVERGE: first divergence at op 0, row 0, token 2"));
    EXPECT_THAT(r.out, HasSubstr("logits error inf"));
  }
}

// ---- nothing to check ---------------------------------------------------------------------------

TEST_F(Hostile, CheckThatComparesNothingIsAUsageError) {
  expect_rejected(cli({"check", "--model", tiny().string(), "--paths", "chunked"}), {"--paths", "at least two"});
  expect_rejected(cli({"check", "--model", tiny().string(), "--paths", "chunked,reference", "--scenario", "no-such-scenario"}),
                  {"--scenario 'no-such-scenario'", "matches no scenario"});
  if (!torch::cuda::is_available()) {  // every pair skipped: chunked-gpu needs a GPU
    expect_rejected(cli({"check", "--model", tiny().string(), "--paths", "chunked-gpu,reference", "--scenario", "prefill_1"}),
                    {"nothing was compared", "chunked-gpu"});
  }
}

TEST_F(Hostile, ScenarioWithoutForwardOpIsInvalidForEveryCommand) {
  for (const nlohmann::json& ops : {nlohmann::json::array(), nlohmann::json::array({{{"op", "reset"}}})}) {
    SCOPED_TRACE(ops.dump());
    const fs::path s = scenario(ops, tiny());
    const fs::path c = copy_case();
    edit_json(c / "scenario.json", [&](nlohmann::json& j) { j["ops"] = ops; });
    const std::vector<std::string> needles = {"'ops'", "no forward op"};
    expect_rejected(cli({"run", s.string(), "--out", (out() / "r.safetensors").string()}), needles);
    expect_rejected(cli({"diff", s.string(), "--paths", "chunked,reference"}), needles);
    expect_rejected(cli({"repro", c.string()}), needles);
    expect_rejected(cli({"reduce", c.string(), "-o", (out() / "reduced").string()}), needles);
    fs::remove_all(c);
  }
}

// ---- JSON: depth, range, types, length ----------------------------------------------------------

TEST_F(Hostile, DeeplyNestedJsonIsAnInputErrorInEveryFileTheToolReads) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');  // 10^5 levels
  // A scenario whose tokens are nested 10^5 deep.
  const fs::path s = dir() / "deep_scenario.json";
  write_text(s, R"({"format": "mambadiff.scenario.v1", "model": ")" + fs::absolute(tiny()).string() +
                    R"(", "ops": [{"op": "forward", "tokens": )" + deep + "}]}");
  // A case whose "origin" is nested 10^5 deep.
  const fs::path c = copy_case();
  const std::string case_text = read_text(c / "case.json");
  write_text(c / "case.json", "{\"origin\": " + deep + "," + case_text.substr(case_text.find('{') + 1));
  // A model whose config.json holds a deep value, and a sharded one whose index does.
  const fs::path deep_config = copy_model("bytes");
  write_text(deep_config / "config.json", "{\"deep\": " + deep + "," + read_text(deep_config / "config.json").substr(1));
  const fs::path deep_index = copy_model("grouped");
  write_text(deep_index / "model.safetensors.index.json",
             "{\"deep\": " + deep + "," + read_text(deep_index / "model.safetensors.index.json").substr(1));
  // A Δ file whose safetensors header is nested 10^5 deep.
  const fs::path deep_delta = dir() / "deep_delta.safetensors";
  {
    std::string header = "{\"__metadata__\": {\"x\": \"y\"}, \"deep\": " + deep + "}";
    std::string bytes(8, '\0');
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
    write_text(deep_delta, bytes + header);
  }
  // A scenario whose "model" is nested 10^5 deep (its error message used to dump the value).
  const fs::path deep_model = dir() / "deep_model.json";
  write_text(deep_model, R"({"format": "mambadiff.scenario.v1", "model": )" + deep + R"(, "ops": []})");
  const std::string nested = "nested deeper than";
  const std::vector<std::pair<Args, std::vector<std::string>>> commands = {
      {{"run", s.string(), "--out", (out() / "r.safetensors").string()}, {s.string(), "'ops[0].tokens", nested}},
      {{"diff", deep_model.string(), "--paths", "chunked,reference"}, {deep_model.string(), "'model", nested}},
      {{"repro", c.string()}, {(c / "case.json").string(), "'origin", nested}},
      {{"reduce", c.string(), "-o", (out() / "reduced").string()}, {(c / "case.json").string(), nested}},
      {{"check", "--model", deep_index.string(), "--paths", "chunked,reference"},
       {(deep_index / "model.safetensors.index.json").string(), "'deep", nested}},
      {{"mutants", "--model", deep_config.string(), "--mutant", "continue-as-prefill"},
       {(deep_config / "config.json").string(), nested}},
      {{"optimize", "--model", deep_config.string(), "--prompt-tokens", "65,66", "--target", "67", "--out",
        (out() / "d.safetensors").string()},
       {(deep_config / "config.json").string(), nested}},
      {{"generate", "--model", tiny().string(), "--prompt-tokens", "3,4", "--delta", deep_delta.string()},
       {deep_delta.string(), "header", "'deep", nested}},
  };
  for (const auto& [args, needles] : commands) {
    SCOPED_TRACE(args[0]);
    expect_rejected(cli(args), needles);
  }
}

TEST_F(Hostile, NumberOutsideDoubleRangeIsAnInputErrorNamingFileAndKey) {
  const fs::path s = dir() / "big.json";
  write_text(s, R"({"format": "mambadiff.scenario.v1", "model": ")" + fs::absolute(tiny()).string() +
                    R"(", "ops": [{"op": "forward", "tokens": [[1, 1e400]]}]})");
  expect_rejected(cli({"run", s.string(), "--out", (out() / "r.safetensors").string()}),
                  {s.string(), "'ops[0].tokens[0][1]'", "outside the range of a double"});
  expect_rejected(cli({"diff", s.string(), "--paths", "chunked,reference"}), {s.string(), "outside the range"});
  const fs::path c = copy_case();
  const std::string text = read_text(c / "case.json");
  write_text(c / "case.json", std::regex_replace(text, std::regex(R"("multiplier": [0-9.]+)"), R"("multiplier": 1e400)"));
  expect_rejected(cli({"repro", c.string()}), {(c / "case.json").string(), "'tolerance.multiplier'", "outside the range"});
  expect_rejected(cli({"reduce", c.string(), "-o", (out() / "reduced").string()}), {"'tolerance.multiplier'"});
  const std::string config = read_text(tiny() / "config.json");
  write_text(tiny() / "config.json", std::regex_replace(config, std::regex(R"("layer_norm_epsilon": [0-9.e-]+)"),
                                                        R"("layer_norm_epsilon": -2e999)"));
  expect_rejected(cli({"generate", "--model", tiny().string(), "--prompt-tokens", "3,4"}),
                  {(tiny() / "config.json").string(), "'layer_norm_epsilon'", "outside the range"});
}

TEST_F(Hostile, ValuesOfTheWrongTypeAreInputErrorsNamingTheKey) {
  nlohmann::json j = nlohmann::json::parse(read_text(good_scenario()));
  j["dtype"] = 5;
  write_text(dir() / "dtype.json", j.dump());
  expect_rejected(cli({"run", (dir() / "dtype.json").string(), "--out", (out() / "r.safetensors").string()}),
                  {"dtype.json", "'dtype'"});
  const nlohmann::json fractional = {{"op", "inject"}, {"layer", 0.5}, {"delta", {{"file", "d.safetensors"}, {"tensor", "delta.0"}}}};
  delta_file(0.0, "d.safetensors");
  const fs::path s = scenario(nlohmann::json::array({fwd(), fractional}), tiny(), "fractional.json");
  expect_rejected(cli({"diff", s.string(), "--paths", "chunked,reference"}), {"fractional.json", "'layer'", "integer"});
  const fs::path c = copy_case();
  edit_json(c / "case.json", [](nlohmann::json& cj) { cj["model_layers"] = 1.5; });
  expect_rejected(cli({"reduce", c.string(), "-o", (out() / "reduced").string(), "--max-candidates", "1"}),
                  {"case.json", "'model_layers'", "integer"});
  edit_json(c / "case.json", [](nlohmann::json& cj) {
    cj["model_layers"] = 1;
    cj["origin"] = {{"a", 1}};
  });
  expect_rejected(cli({"repro", c.string()}), {"case.json", "'origin'"});
}

TEST_F(Hostile, OffendingValuesAreQuotedShortNeverDumpedWhole) {
  nlohmann::json j = nlohmann::json::parse(read_text(good_scenario()));
  j["format"] = std::string(1 << 20, 'x');  // 1 MiB
  write_text(dir() / "long.json", j.dump());
  expect_rejected(cli({"run", (dir() / "long.json").string(), "--out", (out() / "r.safetensors").string()}),
                  {"long.json", "'format'", "xxx..."});
  j = nlohmann::json::parse(read_text(good_scenario()));
  j["dtype"] = nlohmann::json::array();
  for (int i = 0; i < 100000; ++i) j["dtype"].push_back(i);
  write_text(dir() / "long_array.json", j.dump());
  expect_rejected(cli({"run", (dir() / "long_array.json").string(), "--out", (out() / "r.safetensors").string()}),
                  {"long_array.json", "'dtype'", "..."});
}

// ---- inputs that are not regular files: rejected before opening, never a hang -------------------

TEST_F(Hostile, NonRegularInputFilesAreRejectedWithoutHanging) {
  const fs::path s = good_scenario();
  const fs::path c = copy_case();
  const fs::path fifo_weights = copy_model("bytes");
  fs::remove(fifo_weights / "model.safetensors");
  fifo("model_bytes/model.safetensors");
  const fs::path fifo_config = copy_model("grouped");
  fs::remove(fifo_config / "config.json");
  fifo("model_grouped/config.json");
  const fs::path fifo_scenario = fifo("scenario_fifo.json");
  fs::remove(c / "case.json");
  fifo("case/case.json");
  const fs::path fifo_delta = fifo("delta_fifo.safetensors");
  const fs::path fifo_history = fifo("history_fifo.jsonl");
  const std::vector<std::pair<Args, std::vector<std::string>>> commands = {
      {{"trend", fifo_history.string()}, {fifo_history.string(), "FIFO"}},
      {{"run", fifo_scenario.string(), "--out", (out() / "r.safetensors").string()}, {fifo_scenario.string(), "FIFO"}},
      {{"diff", fifo_scenario.string(), "--paths", "chunked,reference"}, {fifo_scenario.string(), "FIFO"}},
      {{"repro", c.string()}, {(c / "case.json").string(), "FIFO"}},
      {{"reduce", c.string(), "-o", (out() / "reduced").string()}, {(c / "case.json").string(), "FIFO"}},
      {{"check", "--model", fifo_config.string(), "--paths", "chunked,reference"}, {(fifo_config / "config.json").string(), "FIFO"}},
      {{"mutants", "--model", fifo_weights.string(), "--mutant", "continue-as-prefill"},
       {(fifo_weights / "model.safetensors").string(), "FIFO"}},
      {{"optimize", "--model", fifo_weights.string(), "--prompt-tokens", "65,66", "--target", "67", "--out",
        (out() / "d.safetensors").string()},
       {(fifo_weights / "model.safetensors").string(), "FIFO"}},
      {{"generate", "--model", tiny().string(), "--prompt-tokens", "3,4", "--delta", fifo_delta.string()},
       {fifo_delta.string(), "FIFO"}},
  };
  for (const auto& [args, needles] : commands) {
    SCOPED_TRACE(args[0]);
    expect_rejected(cli(args), needles);
  }
}

// ---- options outside their domain: usage errors naming the option -------------------------------

TEST_F(Hostile, OptionsOutsideTheirDomainAreUsageErrorsNamingTheOption) {
  const fs::path c = copy_case();
  const Args optimize = {"optimize", "--prompt-tokens", "65,66", "--target", "67", "--out", (out() / "d.safetensors").string()};
  auto with = [](Args base, const Args& more) {
    base.insert(base.end(), more.begin(), more.end());
    return base;
  };
  const std::vector<std::pair<Args, std::string>> commands = {
      {with(optimize, {"--lr=inf"}), "--lr"},
      {with(optimize, {"--lr=nan"}), "--lr"},
      {with(optimize, {"--lr=0"}), "--lr"},
      {with(optimize, {"--margin=nan"}), "--margin"},
      {with(optimize, {"--budget-l2=-1"}), "--budget-l2"},
      {with(optimize, {"--budget-linf=nan"}), "--budget-linf"},
      {with(optimize, {"--steps=-1"}), "--steps"},
      {with(optimize, {"--seed=-1"}), "--seed"},
      {with(optimize, {"--layers=0.5"}), "--layers"},
      {{"generate", "--prompt-tokens", "65,66", "--tokens=-1"}, "--tokens"},
      {{"generate", "--prompt-tokens", "65,66", "--tokens=1000000000"}, "--tokens"},
      {{"reduce", c.string(), "-o", (out() / "reduced").string(), "--max-seconds=nan"}, "--max-seconds"},
      {{"reduce", c.string(), "-o", (out() / "reduced").string(), "--max-seconds=-1"}, "--max-seconds"},
      {{"reduce", c.string(), "-o", (out() / "reduced").string(), "--max-candidates=-1"}, "--max-candidates"},
      {{"check", "--seed=-1"}, "--seed"},
      {{"mutants", "--seed=-5"}, "--seed"},
  };
  for (const auto& [args, option] : commands) {
    SCOPED_TRACE(fmt::format("{}", fmt::join(args, " ")));
    expect_rejected(cli(args), {option});
  }
}

// ---- the optimizer and NaN: never rank 1 -----------------------------------------------------

TEST_F(Hostile, OptimizerStopsWithAFailureWhenTheDeltaBecomesNonFinite) {
  // A learning rate of 1e39 is in the option's domain (a finite double), but the first Adam step
  // moves Δ by ~1e39, past float32's range: Δ becomes infinite and the loss NaN. (1e30 is not
  // enough: the gated RMSNorm normalises a huge state back to finite logits.)
  const Result r = cli({"optimize", "--prompt-tokens", "65,66", "--target", "67", "--lr", "1e39", "--steps", "20",
                        "--out", (out() / "d.safetensors").string()});
  expect_rejected(r, {"NaN or infinite", "no delta written"}, 1);
}

TEST_F(Hostile, NonFiniteLogitsNeverRankTheTarget) {
  const auto ck = mambadiff::Mamba2Checkpoint::load(tiny());
  const auto& c = ck.config;
  const torch::Tensor nan_delta =
      torch::full({1, c.num_heads, c.head_dim, c.state_size}, std::numeric_limits<float>::quiet_NaN());
  const auto report = mambadiff::deploy_delta(ck, "chunked", {3, 4, 5}, {6}, {{0, nan_delta}});
  EXPECT_GT(report.rank, 1) << "NaN logits ranked the target first";
  EXPECT_EQ(report.rank, c.vocab_size + 1);
}

// ---- outputs: devices and FIFOs are written straight through, never replaced --------------------

TEST_F(Hostile, OutputsThatAreDevicesOrFifosAreWrittenThroughNotReplaced) {
  const fs::path null_node = dir() / "null", full_node = dir() / "full";
  ASSERT_EQ(::mknod(null_node.c_str(), S_IFCHR | 0666, makedev(1, 3)), 0) << "mknod needs root";
  ASSERT_EQ(::mknod(full_node.c_str(), S_IFCHR | 0666, makedev(1, 7)), 0);
  const fs::path s = good_scenario();
  auto still_devices = [&] {
    EXPECT_TRUE(fs::is_character_file(null_node)) << "the null device node was replaced";
    EXPECT_TRUE(fs::is_character_file(full_node)) << "the full device node was replaced";
  };
  // Written through to a device that takes everything.
  Result r = cli({"run", s.string(), "--out", null_node.string()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  still_devices();
  r = cli({"diff", s.string(), "--paths", "chunked,reference", "--json", null_node.string()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  still_devices();
  r = cli({"diff", s.string(), "--paths", "chunked,reference", "--report", null_node.string()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  still_devices();
  r = cli({"check", "--model", tiny().string(), "--paths", "chunked,reference", "--scenario", "prefill_1", "--history",
           null_node.string(), "--report", null_node.string()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  still_devices();
  // A device that refuses (ENOSPC): an input error naming it, the node intact.
  expect_rejected(cli({"run", s.string(), "--out", full_node.string()}), {full_node.string(), "No space left"});
  still_devices();
  expect_rejected(cli({"check", "--model", tiny().string(), "--paths", "chunked,reference", "--scenario", "prefill_1",
                       "--json", full_node.string()}),
                  {full_node.string(), "No space left"});
  still_devices();
  expect_rejected(cli({"check", "--model", tiny().string(), "--paths", "chunked,reference", "--scenario", "prefill_1",
                       "--history", full_node.string()}),
                  {full_node.string(), "No space left"});
  still_devices();
  expect_rejected(cli({"diff", s.string(), "--paths", "chunked,reference", "--report", full_node.string()}),
                  {full_node.string(), "No space left"});
  still_devices();
  // A FIFO: its reader gets the bytes, the FIFO stays a FIFO. The test holds the read end open
  // (non-blocking, so a tool that replaces the FIFO instead cannot hang the test).
  const fs::path pipe = fifo("json_fifo");
  const int read_end = ::open(pipe.c_str(), O_RDONLY | O_NONBLOCK);
  ASSERT_GE(read_end, 0);
  r = cli({"diff", s.string(), "--paths", "chunked,reference", "--json", pipe.string()});
  std::string received;
  char buf[4096];
  for (ssize_t n; (n = ::read(read_end, buf, sizeof buf)) > 0;) received.append(buf, static_cast<size_t>(n));
  ::close(read_end);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::is_fifo(pipe));
  EXPECT_THAT(received, HasSubstr("\"verdict\""));
  EXPECT_EQ(fmt::format("{}", fmt::join(temp_files(), " ")), "");
}

TEST_F(Hostile, WriteTextAtomicallyThrowsAnInputErrorNamingTheFile) {
  fs::create_directories(dir() / "a_directory");
  const std::string what = mambadiff::test_support::input_error(
      [&] { mambadiff::write_text_atomically(dir() / "a_directory", "x"); });
  EXPECT_THAT(what, HasSubstr((dir() / "a_directory").string()));
  const std::string missing = mambadiff::test_support::input_error(
      [&] { mambadiff::write_text_atomically(dir() / "no_such_folder" / "x.json", "x"); });
  EXPECT_THAT(missing, HasSubstr("no_such_folder/x.json"));
  EXPECT_EQ(fmt::format("{}", fmt::join(temp_files(), " ")), "");
}

// ---- repro: observed tensors and tolerances ----------------------------------------------------

TEST_F(Hostile, ReproReadsAndChecksTheObservedTensors) {
  const fs::path c = copy_case();
  ASSERT_EQ(cli({"repro", c.string()}).exit_code, 0);
  const std::string observed = (c / "observed.safetensors").string();
  const std::string bytes = read_text(observed);
  write_text(observed, bytes.substr(0, bytes.size() / 2));  // truncated
  expect_rejected(cli({"repro", c.string()}), {observed});
  fs::remove(observed);
  expect_rejected(cli({"repro", c.string()}), {observed});
  expect_rejected(cli({"reduce", c.string(), "-o", (out() / "reduced").string()}), {observed});
}

TEST_F(Hostile, ReproRejectsANegativeOrNanTolerance) {
  // The optional stochastic multipliers are read by the same rule as the required keys.
  const fs::path c = copy_case();
  const nlohmann::json good = nlohmann::json::parse(read_text(c / "case.json"))["tolerance"];
  for (const char* key : {"floor_float32", "stochastic_multiplier", "stochastic_multiplier_bfloat16",
                          "stochastic_multiplier_float16"}) {
    for (const nlohmann::json& bad : {nlohmann::json(-1.0), nlohmann::json("NaN"), nlohmann::json("Infinity")}) {
      SCOPED_TRACE(std::string(key) + " = " + bad.dump());
      edit_json(c / "case.json", [&](nlohmann::json& j) {
        j["tolerance"] = good;
        j["tolerance"][key] = bad;
      });
      expect_rejected(cli({"repro", c.string()}), {"case.json", "'" + std::string(key) + "'"});
    }
  }
}

// ---- Ctrl-C: stop, keep what there is, say so ----------------------------------------------------

TEST_F(Hostile, GenerateHonoursCtrlCAndPrintsWhatItGenerated) {
  // ~100 s of decoding: 8 s is well past the model load (when Ctrl-C starts being honoured).
  const Result r = cli({"generate", "--prompt-tokens", "65,66", "--tokens", "65536"}, /*interrupt_after=*/8.0);
  EXPECT_FALSE(r.killed) << "SIGINT killed it instead of stopping it";
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("interrupted after"));
  EXPECT_THAT(r.out, ::testing::MatchesRegex("[0-9]+(,[0-9]+)*\n(.|\n)*")) << r.out.substr(0, 200);
}

TEST_F(Hostile, ReduceWritesTheBestCaseSoFarOnCtrlC) {
  const fs::path c = copy_case();
  // A scenario large enough that the reduction runs for many seconds after its start (each
  // replay runs the float64 reference over 24 x 400 tokens, ~2 s): Ctrl-C comes right after the
  // "reduce: start" line. The mutant (continuations run as prefills) parts at the second op.
  edit_json(c / "scenario.json", [](nlohmann::json& j) {
    j["ops"] = nlohmann::json::array();
    for (int i = 0; i < 24; ++i) {
      std::vector<std::vector<int64_t>> rows(2, std::vector<int64_t>(400));
      for (int b = 0; b < 2; ++b)
        for (int t = 0; t < 400; ++t) rows[b][t] = (7 * i + 3 * t + b) % 96;
      j["ops"].push_back({{"op", "forward"}, {"tokens", rows}});
    }
  });
  edit_json(c / "case.json", [](nlohmann::json& j) { j["model_layers"] = 2; });
  const fs::path reduced = out() / "reduced";
  const Result r = cli({"reduce", c.string(), "-o", reduced.string(), "--max-seconds", "600"}, /*interrupt_after=*/0.1,
                       /*interrupt_when=*/"reduce: start");
  EXPECT_FALSE(r.killed) << "SIGINT killed it instead of stopping it";
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("interrupted"));
  ASSERT_TRUE(fs::exists(reduced / "case.json")) << r.out;
  EXPECT_EQ(cli({"repro", reduced.string()}).exit_code, 0) << "the best case so far must replay";
  EXPECT_EQ(fmt::format("{}", fmt::join(temp_files(), " ")), "");
}

// ---- the one reader ------------------------------------------------------------------------------

TEST(InputFile, DepthIsBoundedExactlyAtTheLimit) {
  auto nested = [](int levels) { return std::string(levels, '[') + std::string(levels, ']'); };
  EXPECT_NO_THROW(mambadiff::parse_input_json(nested(mambadiff::kMaxJsonDepth), "x.json"));
  const std::string what =
      mambadiff::test_support::input_error([&] { mambadiff::parse_input_json(nested(mambadiff::kMaxJsonDepth + 1), "x.json"); });
  EXPECT_THAT(what, HasSubstr("x.json"));
  EXPECT_THAT(what, HasSubstr("nested deeper than 64"));
}

}  // namespace
