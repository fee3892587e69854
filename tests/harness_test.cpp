// The harness must catch real bugs: planted ones (mutants of tests/mutants/, each a class from
// REFERENCE.md) must make `diff`-style comparisons against the reference diverge at the right
// place, and `check` must
// pass on the embedded models and write its JSON and JUnit reports.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "harness/check_suite.h"
#include "harness/compare.h"
#include "harness/path_registry.h"
#include "harness/scenario.h"
#include "harness/scenario_runner.h"
#include "tests/mutants/catalog.h"

namespace mambadiff {
namespace {

namespace fs = std::filesystem;
const fs::path kSource = MAMBADIFF_SOURCE_DIR;

// The embedded models are tiny: one intra-op thread is the fastest, and timings do not depend on
// what runs beside the tests (the check test took 29.9 s with two threads on the loaded 2-core
// machine; see cli/repro_reduce_mutants.cpp for the command-line figures).
class SingleThreadedTorch : public ::testing::Environment {
 public:
  void SetUp() override { torch::set_num_threads(1); }
};
::testing::Environment* const kSingleThreaded = ::testing::AddGlobalTestEnvironment(new SingleThreadedTorch);

// The planted bugs are mutants of the catalog (tests/mutants/catalog.h), each a class from REFERENCE.md:
// `mutant` against the reference on corpus/scenarios/<scenario> and its model.
Comparison against_reference(const std::string& mutant, const std::string& scenario) {
  const Scenario s = Scenario::load(kSource / "corpus/scenarios" / scenario);
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(s.model_dir);
  const ScenarioResult ref = evaluate_path("reference", s, ck);
  const std::vector<ErrorBaseline> bl = {measure_baseline(evaluate_path("plain-float32", s, ck), ref)};
  return compare_results(mutants::find_mutant(mutant).evaluate(s, ck), ref, ref, bl);
}

TEST(PlantedBugs, DecodeWithoutClampDivergesAtFirstDecodeStep) {
  const Comparison c = against_reference("decode-no-dt-clamp", "limited/decode.json");
  ASSERT_FALSE(c.agree);
  EXPECT_EQ(c.first_divergence->op, 1u);
  EXPECT_EQ(c.first_divergence->layer, 0);
  EXPECT_EQ(c.first_divergence->tensor, "layer_output");
  // The same plant on a model with an infinite limit is harmless: the check must not cry wolf.
  EXPECT_TRUE(against_reference("decode-no-dt-clamp", "tiny/decode.json").agree);
}

TEST(PlantedBugs, RepeatInsteadOfRepeatInterleaveDivergesInFirstLayer) {
  const Comparison c = against_reference("repeat-groups", "grouped/full.json");
  ASSERT_FALSE(c.agree);
  EXPECT_EQ(c.first_divergence->op, 0u);
  EXPECT_EQ(c.first_divergence->layer, 0);
  EXPECT_EQ(c.first_divergence->token, 0);
}

TEST(PlantedBugs, StandInCacheIsCaughtAsDispatchDifference) {
  const Comparison c = against_reference("stand-in-cache", "tiny/decode.json");
  ASSERT_FALSE(c.agree);
  EXPECT_EQ(c.first_divergence->op, 1u);
  EXPECT_EQ(c.first_divergence->tensor, "dispatch_trace");
  EXPECT_NE(c.first_divergence->detail.find("prefill"), std::string::npos) << c.first_divergence->detail;
}

// NaN or an infinity in either side or the reference is a divergence, wherever it is (issue 14:
// NaN logits on both paths used to "agree with error 0", and so did matching infinities).
TEST(Compare, NanOrInfinityInAnyComparedTensorDiverges) {
  const Scenario s = Scenario::load(kSource / "corpus/scenarios/tiny/full.json");
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(s.model_dir);
  const ScenarioResult ref = evaluate_path("reference", s, ck);
  const double kInf = std::numeric_limits<double>::infinity(), kNan = std::numeric_limits<double>::quiet_NaN();
  struct Plant {
    const char* what;
    double a, b, reference;  // planted at logits[0][3][1]; 0 = leave the reference's value
  };
  for (const Plant& p : {Plant{"the same infinity on both sides", kInf, kInf, 0}, Plant{"infinities of opposite sign", kInf, -kInf, 0},
                         Plant{"NaN on both sides", kNan, kNan, 0}, Plant{"NaN on one side", kNan, 0, 0},
                         Plant{"NaN in the reference only", 0, 0, kNan}, Plant{"NaN everywhere", kNan, kNan, kNan}}) {
    SCOPED_TRACE(p.what);
    ScenarioResult a = ref, b = ref, r = ref;
    a.path = "chunked";
    a.dtype = "float32";
    for (const auto& [result, value] : {std::pair<ScenarioResult*, double>{&a, p.a}, {&b, p.b}, {&r, p.reference}}) {
      result->ops[0].logits = ref.ops[0].logits.clone();
      if (value != 0) result->ops[0].logits[0][3][1] = value;
    }
    const Comparison c = compare_results(a, b, r, {});
    ASSERT_FALSE(c.agree);
    EXPECT_EQ(c.first_divergence->batch, 0);
    EXPECT_EQ(c.first_divergence->token, 3);
    EXPECT_EQ(c.first_divergence->tensor, "logits");
    EXPECT_FALSE(std::isfinite(c.first_divergence->error));
  }
}

// A tolerance derived from a NaN baseline is never used: `inf > inf` is false.
TEST(Compare, NonFiniteToleranceDiverges) {
  const Scenario s = Scenario::load(kSource / "corpus/scenarios/tiny/full.json");
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(s.model_dir);
  const ScenarioResult ref = evaluate_path("reference", s, ck);
  ScenarioResult a = ref;
  a.path = "chunked";
  a.dtype = "float32";
  ErrorBaseline nan_baseline;
  nan_baseline.dtype = "float32";
  nan_baseline.error["op0.logits"] = std::numeric_limits<double>::quiet_NaN();
  const Comparison c = compare_results(a, ref, ref, {nan_baseline});
  ASSERT_FALSE(c.agree);
  EXPECT_EQ(c.first_divergence->tensor, "logits");
  EXPECT_NE(c.first_divergence->detail.find("tolerance not finite"), std::string::npos) << describe(*c.first_divergence);
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
