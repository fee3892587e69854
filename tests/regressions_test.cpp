// corpus/regressions/: one divergence case per reported class (REFERENCE.md), each a mutant (or
// HF transformers' own exported tensors) with the scenario that shows it. Every case replays with
// its expected verdict and parts in the class it recorded; `mambadiff repro` says so by its exit
// code (0 reproduced, 1 not, 2 bad input).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>

#include "harness/divergence_case.h"
#include "mutants/catalog.h"
#include "tests/test_support.h"

namespace mambadiff {
namespace {

namespace fs = std::filesystem;
using test_support::Cli;
using test_support::run_cli;
const fs::path kCorpus = fs::path(MAMBADIFF_SOURCE_DIR) / "corpus" / "regressions";

::testing::Environment* const kRegressionsSingleThreaded =
    ::testing::AddGlobalTestEnvironment(new test_support::SingleThreadedTorch);

std::vector<fs::path> case_dirs() {
  std::vector<fs::path> out;
  if (fs::is_directory(kCorpus)) {
    for (const auto& e : fs::directory_iterator(kCorpus))
      if (fs::exists(e.path() / "case.json")) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// The catalog is plugged in per test, not in a global environment: the unit tests share one
// executable, and MutantCatalog.ProductRegistryNeverListsAMutant needs a process without it.
class Regression : public ::testing::TestWithParam<fs::path> {
 protected:
  void SetUp() override { mutants::install_mutant_paths(); }
};

TEST_P(Regression, ReplaysWithItsExpectedVerdictInItsRecordedClass) {
  const DivergenceCase c = DivergenceCase::load(GetParam());
  EXPECT_FALSE(c.reproduces.empty()) << "a regression case names the public report it reproduces";
  EXPECT_EQ(c.expected, "diverge");
  const CaseRun run = c.replay();
  const std::string verdict = run.comparison.agree ? "agree" : "diverge";
  ASSERT_EQ(verdict, c.expected) << GetParam();
  EXPECT_EQ(divergence_class(run.comparison), c.observed_class);
  ASSERT_TRUE(c.first_divergence && run.comparison.first_divergence);
  EXPECT_EQ(run.comparison.first_divergence->op, c.first_divergence->op) << describe(*run.comparison.first_divergence);
  EXPECT_EQ(run.comparison.first_divergence->layer, c.first_divergence->layer);
}

INSTANTIATE_TEST_SUITE_P(Corpus, Regression, ::testing::ValuesIn(case_dirs()),
                         [](const ::testing::TestParamInfo<fs::path>& info) {
                           std::string name = info.param.filename().string();
                           for (char& ch : name)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return name;
                         });

TEST(RegressionCorpus, HoldsACaseForEveryMutantOfTheCatalog) {
  std::set<std::string> covered;
  for (const auto& dir : case_dirs()) {
    const DivergenceCase c = DivergenceCase::load(dir);
    for (const auto& p : {c.path_a, c.path_b})
      if (p.rfind(mutants::kMutantPrefix, 0) == 0) covered.insert(mutants::find_mutant(p).name);
  }
  for (const auto& m : mutants::mutant_catalog()) EXPECT_TRUE(covered.count(m.name)) << "no regression case for " << m.name;
}

TEST(ReproCommand, ExitsZeroWhenTheVerdictIsTheExpectedOne) {
  const auto dirs = case_dirs();
  ASSERT_FALSE(dirs.empty());
  const fs::path json = fs::path(MAMBADIFF_TEST_TMP) / "repro.json";
  const Cli r = run_cli("repro " + dirs.front().string() + " --json " + json.string());
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("REPRODUCED"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("first divergence:"), std::string::npos) << r.out;
  std::ifstream jf(json);
  const auto j = nlohmann::json::parse(jf);
  EXPECT_EQ(j["reproduced"], true);
  EXPECT_EQ(j["verdict"], "diverge");
  for (const char* key : {"paths", "expected", "class", "logits_error", "logits_tolerance", "first_divergence"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
}

TEST(ReproCommand, ExitsOneWhenTheVerdictIsNotTheExpectedOne) {
  // The same case, asserting the paths agree.
  const fs::path dir = fs::path(MAMBADIFF_TEST_TMP) / "repro_expect_agree";
  DivergenceCase c = DivergenceCase::load(case_dirs().front());
  c.expected = "agree";
  c.save(dir);
  const Cli r = run_cli("repro " + dir.string());
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("NOT REPRODUCED"), std::string::npos) << r.out;
}

TEST(ReproCommand, BadCaseIsExitTwoWithOneLineNamingTheFileAndKey) {
  const fs::path dir = fs::path(MAMBADIFF_TEST_TMP) / "repro_bad";
  fs::remove_all(dir);
  DivergenceCase::load(case_dirs().front()).save(dir);
  auto rewrite = [&](const std::function<void(nlohmann::json&)>& edit) {
    std::ifstream in(dir / "case.json");
    nlohmann::json j = nlohmann::json::parse(in);
    edit(j);
    std::ofstream(dir / "case.json") << j.dump(1);
  };
  rewrite([](nlohmann::json& j) { j["format"] = "mambadiff.case.v0"; });
  Cli r = run_cli("repro " + dir.string());
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_NE(r.out.find("case.json: key 'format'"), std::string::npos) << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;

  rewrite([](nlohmann::json& j) {
    j["format"] = "mambadiff.case.v1";
    j.erase("tolerance");
  });
  r = run_cli("repro " + dir.string());
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_NE(r.out.find("'tolerance'"), std::string::npos) << r.out;

  rewrite([](nlohmann::json& j) {
    j["tolerance"] = {{"multiplier", 4}, {"floor_float32", 1e-6}, {"floor_bfloat16", 2e-3}, {"floor_float16", 5e-4}};
    j["model_layers"] = 99;
  });
  r = run_cli("repro " + dir.string());
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_NE(r.out.find("'model_layers'"), std::string::npos) << r.out;

  r = run_cli("repro " + (dir / "missing").string());
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
}

TEST(DiffCommand, WritesItsDivergenceAsACaseThatReproReplays) {
  // HF transformers' own decode, exported in the corpus, against the reference: `diff` fails and
  // writes the case (expected "agree", what diff asked), which `repro` then fails to reproduce.
  const fs::path hf = kCorpus / "hf-decode-no-dt-clamp";
  const fs::path out = fs::path(MAMBADIFF_TEST_TMP) / "diff_case";
  fs::remove_all(out);
  const Cli d = run_cli("diff " + (hf / "scenario.json").string() + " --paths file:" +
                        (hf / "transformers-5.17.safetensors").string() + ",reference --case-out " + out.string());
  EXPECT_EQ(d.exit_code, 1) << d.out;
  const DivergenceCase c = DivergenceCase::load(out);
  EXPECT_EQ(c.expected, "agree");
  EXPECT_EQ(c.observed_verdict, "diverge");
  EXPECT_TRUE(fs::exists(out / "a.safetensors")) << "a file: input travels with the case";
  EXPECT_TRUE(fs::exists(out / "observed.safetensors"));
  const Cli r = run_cli("repro " + out.string());
  EXPECT_EQ(r.exit_code, 1) << r.out;
  // Agreeing paths write no case.
  const fs::path none = fs::path(MAMBADIFF_TEST_TMP) / "diff_no_case";
  fs::remove_all(none);
  EXPECT_EQ(run_cli("diff " + (hf / "scenario.json").string() + " --paths chunked,reference --case-out " + none.string())
                .exit_code,
            0);
  EXPECT_FALSE(fs::exists(none / "case.json"));
}

}  // namespace
}  // namespace mambadiff
