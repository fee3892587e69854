// The harness must catch real bugs: planted ones here (each a class from REFERENCE.md) must make
// `diff`-style comparisons against the reference diverge at the right place, and `check` must
// pass on the embedded models and write its JSON and JUnit reports.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/chunked_path.h"
#include "harness/check_suite.h"
#include "harness/compare.h"
#include "harness/path_registry.h"
#include "harness/scenario.h"
#include "harness/scenario_runner.h"

namespace mambadiff {
namespace {

namespace fs = std::filesystem;
const fs::path kSource = MAMBADIFF_SOURCE_DIR;

// decode without the dt clamp (transformers 5.17's decode branch)
class NoDecodeClamp : public ChunkedPath {
 public:
  using ChunkedPath::ChunkedPath;
  std::string name() const override { return "planted-no-decode-clamp"; }
  torch::Tensor dt_discretize(int64_t l, const torch::Tensor& dt_raw, Branch b) override {
    if (b != Branch::kStep) return ChunkedPath::dt_discretize(l, dt_raw, b);
    return torch::softplus(dt_raw.to(torch::kFloat32) + weights_.layers[static_cast<size_t>(l)].dt_bias);
  }
};

// `repeat` instead of `repeat_interleave` when broadcasting groups to heads (HF PR #37533)
class RepeatNotInterleave : public ChunkedPath {
 public:
  using ChunkedPath::ChunkedPath;
  std::string name() const override { return "planted-repeat-groups"; }
  std::pair<torch::Tensor, torch::Tensor> chunk_scan(int64_t l, const torch::Tensor& x, const torch::Tensor& dt,
                                                     const torch::Tensor& Bm, const torch::Tensor& Cm,
                                                     const torch::Tensor& init) override {
    const int64_t H = x.size(2), G = Bm.size(2);
    // Expand with `repeat` then hand the scan one group per head: head h gets group h % G.
    return ChunkedPath::chunk_scan(l, x, dt, Bm.repeat({1, 1, H / G, 1}), Cm.repeat({1, 1, H / G, 1}), init);
  }
};

// The incident: a stand-in cache without seqlen_offset, so every forward dispatches as prefill.
class StandInCache : public ChunkedPath {
 public:
  using ChunkedPath::ChunkedPath;
  std::string name() const override { return "planted-stand-in-cache"; }
  ForwardOutput run(const torch::Tensor& tokens, Mamba2Cache& cache, Branch) override {
    return ChunkedPath::run(tokens, cache, Branch::kPrefill);
  }
};

Comparison against_reference(ExecutionPath& path, const Scenario& s, const Mamba2Checkpoint& ck) {
  const ScenarioResult ref = evaluate_path("reference", s, ck);
  const std::vector<ErrorBaseline> bl = {measure_baseline(evaluate_path("plain-float32", s, ck), ref)};
  return compare_results(run_scenario(s, path), ref, ref, bl);
}

TEST(PlantedBugs, DecodeWithoutClampDivergesAtFirstDecodeStep) {
  const Scenario s = Scenario::load(kSource / "corpus/scenarios/limited/decode.json");
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(s.model_dir);
  NoDecodeClamp planted(ck, torch::kFloat32, torch::kCPU);
  const Comparison c = against_reference(planted, s, ck);
  ASSERT_FALSE(c.agree);
  EXPECT_EQ(c.first_divergence->op, 1u);
  EXPECT_EQ(c.first_divergence->layer, 0);
  EXPECT_EQ(c.first_divergence->tensor, "layer_output");
  // The same plant on a model with an infinite limit is harmless: the check must not cry wolf.
  const Scenario t = Scenario::load(kSource / "corpus/scenarios/tiny/decode.json");
  const Mamba2Checkpoint tk = Mamba2Checkpoint::load(t.model_dir);
  NoDecodeClamp harmless(tk, torch::kFloat32, torch::kCPU);
  EXPECT_TRUE(against_reference(harmless, t, tk).agree);
}

TEST(PlantedBugs, RepeatInsteadOfRepeatInterleaveDivergesInFirstLayer) {
  const Scenario s = Scenario::load(kSource / "corpus/scenarios/grouped/full.json");
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(s.model_dir);
  RepeatNotInterleave planted(ck, torch::kFloat32, torch::kCPU);
  const Comparison c = against_reference(planted, s, ck);
  ASSERT_FALSE(c.agree);
  EXPECT_EQ(c.first_divergence->op, 0u);
  EXPECT_EQ(c.first_divergence->layer, 0);
  EXPECT_EQ(c.first_divergence->token, 0);
}

TEST(PlantedBugs, StandInCacheIsCaughtAsDispatchDifference) {
  const Scenario s = Scenario::load(kSource / "corpus/scenarios/tiny/decode.json");
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(s.model_dir);
  StandInCache planted(ck, torch::kFloat32, torch::kCPU);
  const Comparison c = against_reference(planted, s, ck);
  ASSERT_FALSE(c.agree);
  EXPECT_EQ(c.first_divergence->op, 1u);
  EXPECT_EQ(c.first_divergence->tensor, "dispatch_trace");
  EXPECT_NE(c.first_divergence->detail.find("prefill"), std::string::npos) << c.first_divergence->detail;
}

TEST(Compare, NanFailsAndMatchingInfinitiesPass) {
  const Scenario s = Scenario::load(kSource / "corpus/scenarios/tiny/full.json");
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(s.model_dir);
  const ScenarioResult ref = evaluate_path("reference", s, ck);
  ScenarioResult a = ref, b = ref;
  a.path = "chunked";
  a.dtype = "float32";
  a.ops[0].logits = ref.ops[0].logits.clone();
  b.ops[0].logits = ref.ops[0].logits.clone();
  a.ops[0].logits[0][3][1] = std::numeric_limits<double>::infinity();
  b.ops[0].logits[0][3][1] = std::numeric_limits<double>::infinity();
  EXPECT_TRUE(compare_results(a, b, ref, {}).agree);
  b.ops[0].logits[0][3][1] = -std::numeric_limits<double>::infinity();
  const Comparison sign = compare_results(a, b, ref, {});
  ASSERT_FALSE(sign.agree);
  EXPECT_EQ(sign.first_divergence->token, 3);
  a.ops[0].logits = ref.ops[0].logits.clone();
  b.ops[0].logits = ref.ops[0].logits.clone();
  a.ops[0].logits[1][5][2] = std::numeric_limits<double>::quiet_NaN();
  const Comparison nan = compare_results(a, b, ref, {});
  ASSERT_FALSE(nan.agree);
  EXPECT_EQ(nan.first_divergence->batch, 1);
  EXPECT_EQ(nan.first_divergence->token, 5);
}

TEST(Check, EmbeddedModelsAgreeOnEveryPathPairAndReportsAreWritten) {
  CheckOptions opt;
  opt.quiet = true;
  const CheckReport r = run_check(opt);
  ASSERT_GE(r.cases.size(), 30u);
  size_t agreed = 0;
  for (const auto& c : r.cases) {
    EXPECT_NE(c.verdict, "diverge") << c.model << " " << c.scenario << " " << c.paths << ": " << c.detail;
    agreed += c.verdict == "agree";
    if (c.verdict == "skipped") {
      EXPECT_FALSE(c.detail.empty()) << "a skip must say why";
    }
  }
  EXPECT_GE(agreed, 30u);
  const fs::path dir = fs::path(MAMBADIFF_TEST_TMP) / "check_reports";
  fs::create_directories(dir);
  write_check_json(r, dir / "check.json");
  write_check_junit(r, dir / "check.xml");
  std::ifstream jf(dir / "check.json");
  const auto j = nlohmann::json::parse(jf);
  EXPECT_EQ(j["verdict"], "agree");
  EXPECT_EQ(j["cases"].size(), r.cases.size());
  for (const char* key : {"model", "scenario", "paths", "error", "tolerance", "verdict", "seed"}) {
    EXPECT_TRUE(j["cases"][0].contains(key)) << key;
  }
  std::stringstream xml;
  xml << std::ifstream(dir / "check.xml").rdbuf();
  EXPECT_NE(xml.str().find("<testsuite name=\"mambadiff.check\""), std::string::npos);
  EXPECT_NE(xml.str().find("<property name=\"seed\""), std::string::npos);
}

TEST(Check, SameSeedSameScenarios) {
  const fs::path model = kSource / "corpus/models/tiny";
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(model);
  const auto a = check_scenarios(ck, model, 7), b = check_scenarios(ck, model, 7), c = check_scenarios(ck, model, 8);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_TRUE(torch::equal(a[4].second.ops[0].tokens, b[4].second.ops[0].tokens));
  EXPECT_FALSE(torch::equal(a[4].second.ops[0].tokens, c[4].second.ops[0].tokens));
}

}  // namespace
}  // namespace mambadiff
