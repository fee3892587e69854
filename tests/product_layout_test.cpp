// How the product is wired: every registered path has a role that the commands act on (never its
// name), and the binary finds its corpus at run time, from where it lives, not from the folder it
// was configured in (harness/corpus_location.h).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include "engine/errors.h"
#include "harness/path_registry.h"
#include "tests/test_support.h"

namespace mambadiff {
namespace {

namespace fs = std::filesystem;
using test_support::Cli;
using test_support::source_dir;

// ---- path roles ---------------------------------------------------------------------------------

TEST(PathRoles, ExactlyOneOracleAndItIsTheReference) {
  EXPECT_EQ(registered_paths(PathRole::kOracle), std::vector<std::string>{"reference"});
  EXPECT_EQ(oracle_path(), "reference");
  EXPECT_TRUE(is_oracle("reference"));
  for (const auto& p : registered_paths()) {
    if (p != "reference") {
      EXPECT_FALSE(is_oracle(p)) << p;
    }
  }
  EXPECT_FALSE(is_oracle("file:reference"));
  EXPECT_FALSE(is_oracle("no-such-path"));  // an unknown name is not the oracle, and no error
}

TEST(PathRoles, EveryRegisteredPathHasOneRoleAndTheRolesCoverTheRegistry) {
  std::set<std::string> seen;
  for (PathRole role : {PathRole::kOracle, PathRole::kBaseline, PathRole::kDifferentiable}) {
    for (const auto& p : registered_paths(role)) {
      EXPECT_EQ(path_role(p), role) << p;
      EXPECT_TRUE(seen.insert(p).second) << p << " listed under two roles";
    }
  }
  const auto all = registered_paths();
  EXPECT_EQ(seen, std::set<std::string>(all.begin(), all.end()));
  // What `check` and `optimize` run: the differentiable implementations, the ones under test.
  EXPECT_EQ(registered_paths(PathRole::kDifferentiable), (std::vector<std::string>{"chunked", "chunked-gpu", "cuda"}));
}

TEST(PathRoles, BaselineOfADtypeComputesInThatDtypeAndFloat32BoundsTheRest) {
  EXPECT_EQ(baseline_path(torch::kFloat32), "plain-float32");
  EXPECT_EQ(baseline_path(torch::kBFloat16), "plain-bfloat16");
  EXPECT_EQ(baseline_path(torch::kFloat16), "plain-float16");
  // No float64 baseline is registered: float32's loops bound it.
  EXPECT_EQ(baseline_path(torch::kFloat64), "plain-float32");
  for (const auto& p : registered_paths(PathRole::kBaseline)) EXPECT_EQ(path_role(p), PathRole::kBaseline);
}

TEST(PathRoles, FileNamesAreExternalFilesAndUnknownNamesAreInputErrors) {
  EXPECT_EQ(path_role("file:/tmp/x.safetensors"), PathRole::kExternalFile);
  EXPECT_EQ(file_path_target("file:a/b.safetensors"), fs::path("a/b.safetensors"));
  EXPECT_EQ(file_path_name("a/b.safetensors"), "file:a/b.safetensors");
  EXPECT_TRUE(is_file_path(file_path_name("x")));
  const std::string msg = test_support::input_error([] { path_role("no-such-path"); });
  EXPECT_NE(msg.find("'no-such-path'"), std::string::npos) << msg;
}

TEST(PathRoles, ProvidedPathsAreUnderTestButNotRegistered) {
  install_path_provider({"layout-test:", [] { return std::vector<std::string>{"layout-test:one"}; },
                         [](const std::string&, const Scenario&, const Mamba2Checkpoint&) { return ScenarioResult(); }});
  EXPECT_EQ(path_role("layout-test:one"), PathRole::kProvided);
  EXPECT_THROW(path_role("layout-test:two"), InputError);
  const auto all = registered_paths();
  EXPECT_EQ(std::count(all.begin(), all.end(), "layout-test:one"), 0);
}

// `optimize` takes its --path by role: a path of any other role is a usage error naming the role.
TEST(PathRoles, OptimizeRefusesEveryPathThatIsNotDifferentiable) {
  const std::string model = (source_dir() / "corpus" / "models" / "tiny").string();
  const std::string out = (fs::path(MAMBADIFF_TEST_TMP) / "product_layout_delta.safetensors").string();
  for (const std::string path : {"reference", "plain-float32", "plain-bfloat16", "plain-float16", "file:x.safetensors"}) {
    const Cli r = test_support::run_cli("optimize --model " + model +
                                        " --prompt-tokens 1,2 --target 3 --layers 0 --steps 1 --out " + out + " --path " + path);
    EXPECT_EQ(r.exit_code, 2) << path << ": " << r.out;
    EXPECT_NE(r.out.find("not differentiable (its role: " + std::string(role_name(path_role(path))) + ")"), std::string::npos)
        << path << ": " << r.out;
  }
}

// ---- the corpus at run time ---------------------------------------------------------------------

class CorpusLocation : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    // Outside the build tree (which lies in a clone, whose corpus a walk up would find).
    tmp_ = fs::temp_directory_path() / ("mambadiff_corpus_location_" + std::to_string(getpid())) / info->name();
    fs::remove_all(tmp_);
    fs::create_directories(tmp_);
  }
  void TearDown() override { fs::remove_all(tmp_.parent_path()); }
  // Runs `binary args` in folder `cwd` with `env` prefixed (e.g. "MAMBADIFF_CORPUS=..."); the
  // variables that would short-cut the lookup are cleared unless given.
  static Cli run_in(const fs::path& cwd, const fs::path& binary, const std::string& args, const std::string& env = "") {
    return test_support::run_shell("cd '" + cwd.string() + "' && env -u MAMBADIFF_CORPUS -u MAMBADIFF_MODELS " + env +
                                   " '" + binary.string() + "' " + args);
  }
  // A second "clone": TREE/build/mambadiff (a copy of the binary) and TREE/corpus/models holding
  // only the tiny model, under a name no other corpus has.
  fs::path make_other_clone() {
    const fs::path tree = tmp_ / "other-clone";
    fs::create_directories(tree / "build");
    fs::copy_file(MAMBADIFF_BINARY, tree / "build" / "mambadiff");
    fs::permissions(tree / "build" / "mambadiff", fs::perms::owner_all, fs::perm_options::add);
    fs::create_directories(tree / "corpus" / "models");
    fs::copy(source_dir() / "corpus" / "models" / "tiny", tree / "corpus" / "models" / "only-in-other-clone",
             fs::copy_options::recursive);
    return tree;
  }
  static constexpr const char* kCheckOneCase = "check --scenario prefill_1 --paths reference,chunked";
  fs::path tmp_;
};

// The bug this guards against: the default models were the configure-time source folder's, so a
// binary in another clone checked the first clone's models.
TEST_F(CorpusLocation, ABinaryReadsTheCorpusOfTheTreeItLivesIn) {
  const fs::path tree = make_other_clone();
  const Cli r = run_in("/", tree / "build" / "mambadiff", kCheckOneCase);
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("only-in-other-clone"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("tiny "), std::string::npos) << "read the source folder's corpus:\n" << r.out;
}

TEST_F(CorpusLocation, ASymlinkedBinaryReadsTheCorpusOfItsTarget) {
  const fs::path tree = make_other_clone();
  const fs::path link = tmp_ / "bin" / "mambadiff";
  fs::create_directories(link.parent_path());
  fs::create_symlink(tree / "build" / "mambadiff", link);
  const Cli r = run_in("/", link, kCheckOneCase);
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("only-in-other-clone"), std::string::npos) << r.out;
}

TEST_F(CorpusLocation, OutsideAnyTreeTheWorkingTreeThenTheVariableDecide) {
  const fs::path tree = make_other_clone();
  const fs::path lone = tmp_ / "lone" / "mambadiff";  // a copy in no tree
  fs::create_directories(lone.parent_path());
  fs::copy_file(tree / "build" / "mambadiff", lone);
  fs::permissions(lone, fs::perms::owner_all, fs::perm_options::add);

  // Nowhere to look: a usage error naming the variable that fixes it.
  const Cli none = run_in("/", lone, kCheckOneCase);
  EXPECT_EQ(none.exit_code, 2) << none.out;
  EXPECT_NE(none.out.find("MAMBADIFF_CORPUS"), std::string::npos) << none.out;

  // Run from inside a tree (a subfolder of it): that tree's corpus.
  const Cli from_tree = run_in(tree / "build", lone, kCheckOneCase);
  EXPECT_EQ(from_tree.exit_code, 0) << from_tree.out;
  EXPECT_NE(from_tree.out.find("only-in-other-clone"), std::string::npos) << from_tree.out;

  // The variable wins over the working tree.
  const fs::path env_corpus = tmp_ / "env-corpus";
  fs::create_directories(env_corpus / "models");
  fs::copy(source_dir() / "corpus" / "models" / "tiny", env_corpus / "models" / "only-in-env-corpus",
           fs::copy_options::recursive);
  const Cli by_env = run_in(tree / "build", lone, kCheckOneCase, "MAMBADIFF_CORPUS='" + env_corpus.string() + "'");
  EXPECT_EQ(by_env.exit_code, 0) << by_env.out;
  EXPECT_NE(by_env.out.find("only-in-env-corpus"), std::string::npos) << by_env.out;
  EXPECT_EQ(by_env.out.find("only-in-other-clone"), std::string::npos) << by_env.out;

  const Cli bad = run_in("/", lone, kCheckOneCase, "MAMBADIFF_CORPUS=/no/such/folder");
  EXPECT_EQ(bad.exit_code, 2) << bad.out;
  EXPECT_NE(bad.out.find("MAMBADIFF_CORPUS=/no/such/folder"), std::string::npos) << bad.out;
}

}  // namespace
}  // namespace mambadiff
