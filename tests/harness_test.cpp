// The harness must catch real bugs: planted ones (mutants of mutants/, each a class from
// REFERENCE.md) must make `diff`-style comparisons against the reference diverge at the right
// place, and `check` must
// pass on the embedded models and write its JSON and JUnit reports.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/errors.h"
#if MAMBADIFF_CUDA_PATH
#include "cuda_path/fused_ops.h"
#endif
#include "harness/check_suite.h"
#include "harness/compare.h"
#include "harness/path_registry.h"
#include "harness/scenario.h"
#include "harness/scenario_runner.h"
#include "mutants/catalog.h"

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

// The planted bugs are mutants of the catalog (mutants/catalog.h), each a class from REFERENCE.md:
// `mutant` against the reference on corpus/scenarios/<scenario> and its model.
Comparison against_reference(const std::string& mutant, const std::string& scenario) {
  const Scenario s = Scenario::load(kSource / "corpus/scenarios" / scenario);
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(s.model_dir);
  const ScenarioResult ref = evaluate_path("reference", s, ck);
  const std::vector<ErrorBaseline> bl = {measure_baseline(evaluate_path("plain-float32", s, ck), ref)};
  return compare_results(mutants::find_mutant(mutant).evaluate(s, ck), ref, ref, bl);
}

// A provider's path ("mutant:x") and an external file ("file:PATH") pass path_available(); make_path
// has no registry entry to build them from and must say so, not dereference the missing entry.
TEST(PathRegistry, MakePathOnAProviderOrFileNameIsAnInputErrorNamingIt) {
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(kSource / "corpus/models/tiny");
  install_path_provider({"planted:", [] { return std::vector<std::string>{"planted:x"}; },
                         [](const std::string&, const Scenario&, const Mamba2Checkpoint&) -> ScenarioResult {
                           throw std::logic_error("never evaluated here");
                         }});
  ASSERT_TRUE(path_available("planted:x", torch::kFloat32));
  for (const std::string name : {"planted:x", "file:/nonexistent/result.safetensors"}) {
    try {
      make_path(name, ck, torch::kFloat32);
      ADD_FAILURE() << name << ": no error";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("'" + name + "'"), std::string::npos) << e.what();
    }
  }
}

#if MAMBADIFF_CUDA_PATH
// The fused ops check every tensor before a launch; these checks run on CPU tensors (no GPU
// needed): a CPU tensor is a clear error naming the op and the tensor, never a launch on a host
// pointer; a model past a kernel's limit is an InputError naming the config key.
std::string launch_error(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const InputError& e) {
    return std::string("InputError: ") + first_line(e);
  } catch (const c10::Error& e) {
    return first_line(e);
  }
  return "nothing thrown";
}

TEST(FusedOpChecks, CpuTensorsAreRejectedNamingTheOpAndTensor) {
  const auto f32 = torch::kFloat32;
  const torch::Tensor x3 = torch::zeros({1, 2, 8}), w8 = torch::ones({8});
  EXPECT_EQ(launch_error([&] { fused::rms_norm(x3, w8, 1e-5); }),
            "cuda rms_norm: tensor 'x' must be on a CUDA device, got cpu");
  EXPECT_EQ(launch_error([&] { fused::gated_rms_norm(x3, x3, w8, 1e-5, 8); }),
            "cuda gated_rms_norm: tensor 'y' must be on a CUDA device, got cpu");
  EXPECT_EQ(launch_error([&] { fused::causal_conv1d(x3, torch::zeros({1, 8, 4}), torch::ones({8, 4}), {}); }),
            "cuda causal_conv1d: tensor 'inputs' must be on a CUDA device, got cpu");
  EXPECT_EQ(launch_error([&] { fused::discretize_dt(torch::zeros({1, 2, 4}), torch::zeros({4}), 0.0, 1.0); }),
            "cuda discretize_dt: tensor 'dt_raw' must be on a CUDA device, got cpu");
  const torch::Tensor x = torch::zeros({1, 2, 4, 16}), bc = torch::zeros({1, 2, 1, 16});
  const torch::Tensor dt = torch::zeros({1, 2, 4}, f32), h = torch::zeros({4}, f32);
  EXPECT_EQ(launch_error([&] { fused::ssd_chunk_scan(x, dt, h, bc, bc, h, {}); }),
            "cuda ssd_chunk_scan: tensor 'x' must be on a CUDA device, got cpu");
}

TEST(FusedOpChecks, ShapesAndKernelLimitsAreCheckedBeforeTheDevice) {
  const torch::Tensor dt = torch::zeros({1, 2, 4}), h = torch::zeros({4});
  // B and C disagree with x on the token count: named, not read out of bounds.
  EXPECT_EQ(launch_error([&] {
              fused::ssd_chunk_scan(torch::zeros({1, 2, 4, 16}), dt, h, torch::zeros({1, 3, 1, 16}), torch::zeros({1, 3, 1, 16}),
                              h, {});
            }),
            "cuda ssd_chunk_scan: tensor 'B' must have shape [1, 2, *, *], got [1, 3, 1, 16]");
  EXPECT_EQ(launch_error([&] {
              fused::ssd_chunk_scan(torch::zeros({1, 2, 4, 16}), dt, h, torch::zeros({1, 2, 1, 512}),
                              torch::zeros({1, 2, 1, 512}), h, {});
            }),
            "InputError: cuda ssd_chunk_scan: config key 'state_size' = 512 exceeds the fused kernel's limit of 256");
  EXPECT_EQ(launch_error([&] {
              fused::ssd_chunk_scan(torch::zeros({1, 2, 4, 300}), dt, h, torch::zeros({1, 2, 1, 16}),
                              torch::zeros({1, 2, 1, 16}), h, {});
            }),
            "InputError: cuda ssd_chunk_scan: config key 'head_dim' = 300 exceeds the fused kernel's limit of 256");
  EXPECT_EQ(launch_error([&] {
              fused::causal_conv1d(torch::zeros({1, 2, 8}), torch::zeros({1, 8, 9}), torch::ones({8, 9}), {});
            }),
            "InputError: cuda causal_conv1d: config key 'conv_kernel' = 9 exceeds the fused kernel's limit of 8");
  EXPECT_EQ(launch_error([&] {
              fused::causal_conv1d(torch::zeros({1, 2, 8}), torch::zeros({1, 8, 4}), torch::ones({7, 4}), {});
            }),
            "cuda causal_conv1d: tensor 'weight' must have shape [8, *], got [7, 4]");
}
#endif

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
