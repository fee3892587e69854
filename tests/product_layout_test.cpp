// How the product is wired: every registered path has a role that the commands act on (never its
// name).
#include <gtest/gtest.h>

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
  // No float16 or float64 baseline is registered: float32's loops bound them.
  EXPECT_EQ(baseline_path(torch::kFloat16), "plain-float32");
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
  for (const std::string path : {"reference", "plain-float32", "plain-bfloat16", "file:x.safetensors"}) {
    const Cli r = test_support::run_cli("optimize --model " + model +
                                        " --prompt-tokens 1,2 --target 3 --layers 0 --steps 1 --out " + out + " --path " + path);
    EXPECT_EQ(r.exit_code, 2) << path << ": " << r.out;
    EXPECT_NE(r.out.find("not differentiable (its role: " + std::string(role_name(path_role(path))) + ")"), std::string::npos)
        << path << ": " << r.out;
  }
}

}  // namespace
}  // namespace mambadiff
