// `reduce` (SPEC §6): a divergence found by `check` on a mutant shrinks to a case of a few ops and
// tokens that still diverges in the same class, is a valid scenario, and replays from disk.
#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include "engine/errors.h"
#include "harness/check_suite.h"
#include "harness/divergence_case.h"
#include "harness/reduce.h"
#include "mutants/catalog.h"
#include "tests/test_support.h"

namespace mambadiff {
namespace {

namespace fs = std::filesystem;
::testing::Environment* const kReduceSingleThreaded =
    ::testing::AddGlobalTestEnvironment(new test_support::SingleThreadedTorch);

// The catalog is plugged in per test, not in the global environment: the unit tests share one
// executable, and MutantCatalog.ProductRegistryNeverListsAMutant needs a process without it.
class Reduce : public ::testing::Test {
 protected:
  void SetUp() override { mutants::install_mutant_paths(); }
};

// `check` on one model and scenario with `mutant` as a path; the divergence it writes as a case.
DivergenceCase check_failure(const std::string& model, const std::string& scenario, const std::string& mutant) {
  const fs::path dir = fs::path(MAMBADIFF_TEST_TMP) / "reduce" / (mutant + "." + scenario);
  fs::remove_all(dir);
  CheckOptions opt;
  opt.models = {test_support::model_dir(model)};
  opt.paths = {"reference", "mutant:" + mutant};
  opt.only_scenario = scenario;
  opt.cases_dir = dir;
  opt.quiet = true;
  const CheckReport report = run_check(opt);
  for (const auto& c : report.cases)
    if (c.scenario == scenario && c.verdict == "diverge") return DivergenceCase::load(c.case_dir);
  ADD_FAILURE() << "check did not kill " << mutant << " on " << model << "/" << scenario;
  return {};
}

int64_t tokens_of(const Scenario& s) {
  int64_t n = 0;
  for (const auto& op : s.ops)
    if (op.kind == OpKind::kForward) n += op.tokens.numel();
  return n;
}

// The reduced case, written and read back, replays with the same verdict and class.
void expect_replays_from_disk(const ReduceOutcome& r, const std::string& name) {
  const fs::path out = fs::path(MAMBADIFF_TEST_TMP) / "reduce" / (name + ".reduced");
  r.reduced.save(out, &r.run);
  const DivergenceCase back = DivergenceCase::load(out);
  EXPECT_EQ(back.model_layers, r.reduced.model_layers);
  const CaseRun replay = back.replay();
  EXPECT_FALSE(replay.comparison.agree);
  EXPECT_EQ(divergence_class(replay.comparison), r.target_class);
  EXPECT_EQ(back.observed_class, r.target_class);
}

TEST_F(Reduce, CheckFailureOnAMutantShrinksToAFewOpsAndTokens) {
  // check's "continue" scenario: 2 rows, forwards of 9, 19 and 2 tokens on a 2-layer model.
  const DivergenceCase found = check_failure("tiny", "continue", "continue-drops-initial-state");
  EXPECT_EQ(found.expected, "agree");  // what check expected
  EXPECT_EQ(found.observed_verdict, "diverge");
  ASSERT_EQ(found.scenario.ops.size(), 3u);
  ASSERT_EQ(tokens_of(found.scenario), 2 * (9 + 19 + 2));

  const ReduceOutcome r = reduce_case(found);
  ASSERT_TRUE(r.diverges);
  EXPECT_EQ(r.target_class, "layer_output");
  const Scenario& s = r.reduced.scenario;
  // The bug needs a state (one forward) and a cached multi-token forward: 2 ops, 3 tokens, 1 row.
  EXPECT_LE(s.ops.size(), 2u) << scenario_size(s, r.reduced.model_layers);
  EXPECT_LE(tokens_of(s), 3) << scenario_size(s, r.reduced.model_layers);
  EXPECT_EQ(s.batch_size(), 1);
  EXPECT_EQ(r.reduced.model_layers, 1);
  EXPECT_EQ(r.reduced.expected, "agree");  // reduce keeps what the case asserts
  expect_replays_from_disk(r, "continue-drops-initial-state");
}

TEST_F(Reduce, KeepsTheSnapshotARestoreNeeds) {
  const DivergenceCase found = check_failure("tiny", "snapshot_restore", "snapshot-aliases-storage");
  const ReduceOutcome r = reduce_case(found);
  ASSERT_TRUE(r.diverges);
  const Scenario& s = r.reduced.scenario;
  EXPECT_LT(s.ops.size(), found.scenario.ops.size());
  EXPECT_LE(s.ops.size(), 4u) << scenario_size(s, r.reduced.model_layers);
  std::set<std::string> taken;
  bool restores = false;
  for (const auto& op : s.ops) {
    if (op.kind == OpKind::kSnapshot) taken.insert(op.name);
    if (op.kind == OpKind::kRestore) {
      restores = true;
      EXPECT_TRUE(taken.count(op.name)) << "restore of '" << op.name << "' without its snapshot";
    }
  }
  EXPECT_TRUE(restores) << "an aliasing snapshot only shows through a restore";
  expect_replays_from_disk(r, "snapshot-aliases-storage");
}

TEST_F(Reduce, ScalesTheDeltaToZeroWhenTheInjectionItselfMisalignsTheConvWindow) {
  // The incident's 69.5 logit gap came with delta = 0: reduce finds that too.
  const DivergenceCase found = check_failure("tiny", "inject_layer0", "conv-window-misaligned");
  const ReduceOutcome r = reduce_case(found);
  ASSERT_TRUE(r.diverges);
  bool injects = false;
  for (const auto& op : r.reduced.scenario.ops) {
    if (op.kind != OpKind::kInject) continue;
    injects = true;
    EXPECT_FALSE(op.delta.ne(0).any().item<bool>()) << "the delta should have shrunk to 0";
  }
  EXPECT_TRUE(injects);
  EXPECT_LE(r.reduced.scenario.ops.size(), 2u);
}

TEST_F(Reduce, ACaseThatAgreesHasNothingToReduce) {
  DivergenceCase c;
  c.scenario = Scenario::load(fs::path(MAMBADIFF_SOURCE_DIR) / "corpus/scenarios/tiny/decode.json");
  c.model_layers = 2;
  c.path_a = "chunked";
  c.path_b = "reference";
  const ReduceOutcome r = reduce_case(c);
  EXPECT_FALSE(r.diverges);
  EXPECT_EQ(r.steps, 0);
}

TEST_F(Reduce, FixedFileResultsNeedAnExporter) {
  DivergenceCase c;
  c.scenario = Scenario::load(fs::path(MAMBADIFF_SOURCE_DIR) / "corpus/scenarios/tiny/decode.json");
  c.model_layers = 2;
  c.path_a = "file:hf.safetensors";
  c.path_b = "reference";
  try {
    reduce_case(c);
    ADD_FAILURE() << "a file: side cannot be re-run without an exporter";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("--exporter"), std::string::npos) << e.what();
  }
}

// An external case reduced by re-exporting every candidate: the Triton-softplus regression case
// (mamba_ssm's export vs reference), with the stand-in backend of tools/ecosystem/export.py playing
// the system (plain torch with that softplus: it reproduces the kernels' numbers, docs/external.md).
// The reduced case carries its own export and replays on the CPU without the exporter.
TEST_F(Reduce, AnExternalCaseShrinksThroughItsExporter) {
  const fs::path input = fs::path(MAMBADIFF_SOURCE_DIR) / "corpus/regressions/triton-softplus-cancellation";
  const fs::path out = test_support::fresh_dir("reduce", "external", false);
  const std::string exporter = std::string("MAMBADIFF_STAND_IN_SOFTPLUS=triton ") + MAMBADIFF_PYTHON + " " +
                               MAMBADIFF_SOURCE_DIR + "/tools/ecosystem/export.py --backend stand_in --device cpu " +
                               "{scenario} --out {out}";
  const auto r = test_support::run_cli("reduce " + input.string() + " -o " + out.string() +
                                       " --max-candidates 3 --exporter \"" + exporter + "\"");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("keep the first 1 layer"), std::string::npos) << r.out;  // the first candidate tried
  const DivergenceCase reduced = DivergenceCase::load(out);
  EXPECT_EQ(reduced.model_layers, 1);
  EXPECT_EQ(reduced.path_a, "file:" + (out / "a.safetensors").string());
  EXPECT_TRUE(fs::exists(out / "a.safetensors"));
  const auto replay = test_support::run_cli("repro " + out.string());
  EXPECT_EQ(replay.exit_code, 0) << replay.out;
  EXPECT_NE(replay.out.find("REPRODUCED"), std::string::npos) << replay.out;

  // An exporter that fails: the case cannot even be replayed at the start; a clear error, no case.
  const fs::path out2 = test_support::fresh_dir("reduce", "external-failing", false);
  // The whole command line's output is the exporter's, and its last line is in the message (the
  // work folder with the log is gone after).
  const auto bad = test_support::run_cli("reduce " + input.string() + " -o " + out2.string() +
                                         " --exporter \"echo boom >&2; exit 3\"");
  EXPECT_EQ(bad.exit_code, 2) << bad.out;
  EXPECT_NE(bad.out.find("exporter: 'echo boom >&2; exit 3' failed on a candidate (exit 3): boom"), std::string::npos)
      << bad.out;
  EXPECT_FALSE(fs::exists(out2 / "case.json"));
}

}  // namespace
}  // namespace mambadiff
