// Stochastic rounding (oracles/stochastic_rounding.h) and the tolerance baseline drawn from it
// (harness/tolerance_baseline.h), tested as a library: the grid, the two neighbours, the odds,
// reproducibility; then the loops built on it and the baseline the harness derives.
#include <gtest/gtest.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <limits>

#include "engine/checkpoint.h"
#include "harness/compare.h"
#include "harness/divergence_case.h"
#include "harness/path_registry.h"
#include "harness/scenario_runner.h"
#include "harness/tolerance_baseline.h"
#include "oracles/reference_path.h"
#include "oracles/stochastic_rounding.h"
#include "tests/test_support.h"

namespace mambadiff {
namespace {

using sr::Rounded;

ScenarioOp forward(std::vector<int64_t> tokens) {
  ScenarioOp op;
  op.kind = OpKind::kForward;
  op.tokens = torch::tensor(tokens, torch::kInt64).unsqueeze(0);  // [1, T]
  return op;
}
bool on_bfloat16_grid(double v) {
  return static_cast<double>(static_cast<float>(c10::BFloat16(static_cast<float>(v)))) == v;
}

TEST(StochasticRounding, ValuesOnTheGridAreKept) {
  const sr::RoundingSeed seed(1);
  for (double v : {0.0, -0.0, 1.0, -1.5, double{0.1f}, double{3.0e38f}, double{1.0e-30f},
                   static_cast<double>(std::nextafter(1.0f, 2.0f))}) {
    EXPECT_EQ(static_cast<double>(Rounded<24>(v)), v) << v;
  }
  EXPECT_EQ(static_cast<double>(Rounded<8>(1.0078125)), 1.0078125);  // 1 + 2^-7: bf16's first step above 1
  EXPECT_TRUE(std::isnan(static_cast<double>(Rounded<24>(std::nan("")))));
  EXPECT_EQ(static_cast<double>(Rounded<24>(-INFINITY)), -INFINITY);
}

TEST(StochasticRounding, EveryResultIsOneOfTheTwoNeighbours) {
  const sr::RoundingSeed seed(7);
  const double values[] = {0.1, -0.1, 1.0 / 3.0, -2.0 / 3.0, 1e-20 / 3.0, 7e30 / 3.0, M_PI, -M_E};
  for (double v : values) {
    const float nearest = static_cast<float>(v);
    const float down = nearest <= v ? nearest : std::nextafter(nearest, -INFINITY);
    const float up = std::nextafter(down, INFINITY);
    for (int i = 0; i < 200; ++i) {
      const double r = static_cast<double>(Rounded<24>(v));
      EXPECT_TRUE(r == down || r == up) << v << " -> " << r;
      const double b = static_cast<double>(Rounded<8>(v));
      EXPECT_TRUE(on_bfloat16_grid(b)) << v << " -> " << b;
      EXPECT_LE(std::abs(b - v), std::abs(v) * std::ldexp(1.0, -7)) << v << " -> " << b;
    }
  }
}

// float16 is modelled with its range (oracles/stochastic_rounding.h): every result is a float16
// value within one of its steps of the exact one -- 2^-10 relative where normal, the fixed step 2^-24
// below 2^-14 -- and a result rounded above 65504 is an infinity, as a float16 store makes it.
TEST(StochasticRounding, Float16HasItsSubnormalGridAndOverflowsToInfinity) {
  const sr::RoundingSeed seed(13);
  auto on_float16_grid = [](double v) { return static_cast<double>(static_cast<float>(c10::Half(static_cast<float>(v)))) == v; };
  const double subnormal_step = std::ldexp(1.0, -24);
  bool subnormal_up = false, subnormal_down = false;
  for (int i = 1; i <= 4000; ++i) {
    for (double v : {i * 1.0 / 3.0, -i * 7.3e-3, i * 1.3e-9, -i * 2.9e-8, 6.0e4 + i * 1e-3}) {
      const double r = static_cast<double>(sr::StochasticFloat16(v));
      ASSERT_TRUE(on_float16_grid(r)) << v << " -> " << r;
      const bool subnormal = std::abs(v) < std::ldexp(1.0, -14);
      EXPECT_LT(std::abs(r - v), subnormal ? subnormal_step : std::abs(v) * std::ldexp(1.0, -10)) << v << " -> " << r;
      if (subnormal && r != v) (std::abs(r) > std::abs(v) ? subnormal_up : subnormal_down) = true;
    }
  }
  EXPECT_TRUE(subnormal_up && subnormal_down) << "subnormals round both ways";
  EXPECT_EQ(static_cast<double>(sr::StochasticFloat16(65504.0)), 65504.0);  // the largest finite float16
  EXPECT_EQ(static_cast<double>(sr::StochasticFloat16(1e6)), INFINITY);
  EXPECT_EQ(static_cast<double>(sr::StochasticFloat16(-70000.0)), -INFINITY);
  EXPECT_EQ(static_cast<double>(sr::StochasticFloat16(std::ldexp(1.0, -24))), std::ldexp(1.0, -24));
  // float32's and bfloat16's formats keep float64's range: no flush, no overflow at float16's limits.
  EXPECT_EQ(static_cast<double>(Rounded<8>(1048576.0)), 1048576.0);  // 2^20: above 65504, not inf
}

// Up with probability (v - down) / ulp: values a quarter of the way between two floats round up a
// quarter of the time, so the mean error is 0 (the rounding is unbiased). The random bits come from
// the value (oracles/stochastic_rounding.h), so the odds are over 20,000 different values at the
// same offset; sigma of the fraction 0.003, checked at 5 sigma. And one value under 2,000 seeds.
TEST(StochasticRounding, RoundsUpInProportionToTheDistance) {
  const sr::RoundingSeed seed(11);
  const double ulp = std::ldexp(1.0, -23);
  constexpr int kDraws = 20000;
  for (double fraction : {0.25, 0.5, 0.9}) {
    int ups = 0;
    for (int i = 0; i < kDraws; ++i) {
      const double v = 1.0 + (i + fraction) * ulp;
      ups += static_cast<double>(Rounded<24>(v)) > v;
    }
    EXPECT_NEAR(static_cast<double>(ups) / kDraws, fraction, 5 * std::sqrt(fraction * (1 - fraction) / kDraws))
        << "fraction " << fraction;
  }
  int ups = 0;
  for (uint64_t s = 0; s < 2000; ++s) {
    const sr::RoundingSeed other(s);
    ups += static_cast<double>(Rounded<24>(1.0 + 0.25 * ulp)) > 1.0;
  }
  EXPECT_NEAR(ups / 2000.0, 0.25, 5 * std::sqrt(0.25 * 0.75 / 2000)) << "one value, many seeds";
}

TEST(StochasticRounding, ARunReplaysFromItsSeedAndSeedsDiffer) {
  auto draw = [](uint64_t seed) {
    const sr::RoundingSeed scope(seed);
    std::vector<double> out;
    Rounded<24> acc(0.0);
    for (int i = 1; i <= 100; ++i) {
      acc = acc + Rounded<24>(1.0 / i);
      out.push_back(static_cast<double>(acc));
    }
    return out;
  };
  EXPECT_EQ(draw(3), draw(3));
  EXPECT_NE(draw(3), draw(4));
}

TEST(StochasticRounding, ArithmeticRoundsEachResultOnce) {
  const sr::RoundingSeed seed(5);
  const Rounded<24> b(std::ldexp(1.0, -30));  // far below the last bit of every a
  int changed = 0;
  for (int i = 0; i < 4000; ++i) {
    const double a = 1.0 + i * std::ldexp(1.0, -23);  // 4000 different floats in [1, 2)
    const double s = static_cast<double>(Rounded<24>(a) + b);
    EXPECT_TRUE(s == a || s == a + std::ldexp(1.0, -23)) << s;
    changed += s != a;
  }
  // Rounding to nearest would drop b every time; stochastic rounding keeps it on average: up
  // 2^-7 of the time, ~31 of 4000.
  EXPECT_GT(changed, 10);
  EXPECT_LT(changed, 60);
  EXPECT_EQ(static_cast<double>(-Rounded<24>(1.0)), -1.0);
  EXPECT_EQ(static_cast<double>(Rounded<24>(3.0) * Rounded<24>(0.5)), 1.5);  // exact products stay exact
  // A multiply-add rounds once: 1 + (1 + 2^-23)(2^-24) is 1 + 2^-24 + 2^-47, never 1 + 2^-23 + 2^-23.
  const Rounded<24> one(1.0), x(1.0 + std::ldexp(1.0, -23)), y(std::ldexp(1.0, -24));
  const double fused = static_cast<double>(multiply_add(one, x, y));
  EXPECT_TRUE(fused == 1.0 || fused == 1.0 + std::ldexp(1.0, -23)) << fused;
}

TEST(StochasticBaselinePath, ResultsLieOnTheModelledGridAndReplayFromTheSeed) {
  torch::set_num_threads(1);
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(test_support::model_dir("tiny"));
  Scenario s;
  s.dtype = torch::kFloat32;
  s.ops.push_back(forward({1, 2, 3, 4, 5}));
  StochasticFloat32Path a(ck, 1), again(ck, 1), other(ck, 2);
  const ScenarioResult ra = run_scenario(s, a), ra2 = run_scenario(s, again), rb = run_scenario(s, other);
  const ScenarioResult ref = evaluate_path("reference", s, ck);
  EXPECT_EQ(a.dtype(), torch::kFloat32);
  const torch::Tensor logits = ra.ops[0].logits;
  ASSERT_EQ(logits.scalar_type(), torch::kFloat64);
  EXPECT_TRUE(torch::equal(logits.to(torch::kFloat32).to(torch::kFloat64), logits)) << "every logit a float32";
  EXPECT_TRUE(torch::equal(logits, ra2.ops[0].logits)) << "same seed, same bits";
  EXPECT_FALSE(torch::equal(logits, rb.ops[0].logits)) << "another seed rounds elsewhere";
  // A float32-sized error: not float64's (0), not bfloat16's.
  const double err = (logits - ref.ops[0].logits).abs().max().item<double>() /
                     ref.ops[0].logits.abs().max().item<double>();
  EXPECT_GT(err, 1e-9);
  EXPECT_LT(err, 1e-5);

  StochasticBFloat16Path h(ck, 1);  // stored activations at 8 bits, sums at 24
  Scenario s16 = s;
  s16.dtype = torch::kBFloat16;
  const torch::Tensor l16 = run_scenario(s16, h).ops[0].logits;
  EXPECT_TRUE(torch::equal(l16.to(torch::kBFloat16).to(torch::kFloat64), l16)) << "every logit a bfloat16";
}

TEST(ToleranceBaseline, StochasticRunsKeepTheWorstErrorAndNaN) {
  ErrorBaseline a, b, c;
  a.error = {{"x", 0.5}};
  b.error = {{"x", 1.0}, {"y", 2.0}, {"n", 1.0}};
  c.error = {{"x", 3.0}, {"y", 1.0}, {"z", 4.0}, {"n", std::nan("")}};
  add_stochastic_run(a, b);
  add_stochastic_run(a, c);
  EXPECT_EQ(a.at("x"), 0.5) << "the plain loops' error is its own";
  EXPECT_EQ(a.stochastic_at("x"), 3.0);
  EXPECT_EQ(a.stochastic_at("y"), 2.0);
  EXPECT_EQ(a.stochastic_at("z"), 4.0);
  EXPECT_TRUE(std::isnan(a.stochastic_at("n")));
}

// The policy: max(multiplier x plain, stochastic_multiplier x stochastic) + floor; NaN in either is
// no tolerance; 0 turns the stochastic runs off.
TEST(ToleranceBaseline, PolicyWeighsBothErrors) {
  ErrorBaseline bl;
  bl.dtype = "float32";
  bl.error = {{"op0.logits", 1e-7}, {"op0.layer0", 1e-6}, {"op0.layer1", 1e-7}};
  bl.stochastic_error = {{"op0.logits", 1e-6}, {"op0.layer0", 1e-7}, {"op0.layer1", 1e-7}};
  ScenarioResult ref, got;
  ref.path = "reference";
  ref.dtype = "float64";
  got.path = "chunked";
  got.dtype = "float32";
  OpResult op;
  op.kind = OpKind::kForward;
  op.logits = torch::ones({1, 1, 4}, torch::kFloat64);
  op.layer_outputs = {torch::ones({1, 1, 2}, torch::kFloat64), torch::ones({1, 1, 2}, torch::kFloat64)};
  ref.ops = {op};
  OpResult off = op;
  off.logits = op.logits + 2.5e-6;  // over 4 x 1e-7 + 1e-6, under 2 x 1e-6 + 1e-6
  off.layer_outputs = {op.layer_outputs[0], op.layer_outputs[1].clone()};
  got.ops = {off};
  const Comparison c = compare_results(got, ref, ref, {bl});
  EXPECT_TRUE(c.agree) << describe(*c.first_divergence);
  EXPECT_NEAR(c.logits_tolerance, 3e-6, 1e-12) << "2 x stochastic + floor";
  TolerancePolicy plain_only;
  plain_only.stochastic_multiplier = 0;
  const Comparison p = compare_results(got, ref, ref, {bl}, plain_only);
  ASSERT_FALSE(p.agree);
  EXPECT_EQ(p.first_divergence->tensor, "logits") << "4 x 1e-7 + 1e-6 < 2.5e-6";
  bl.stochastic_error["op0.layer1"] = std::nan("");
  const Comparison n = compare_results(got, ref, ref, {bl});
  ASSERT_FALSE(n.agree);
  EXPECT_EQ(n.first_divergence->tensor, "layer_output") << "layer 1's NaN stochastic error: no tolerance";
  EXPECT_EQ(n.first_divergence->layer, 1);
}

TEST(ToleranceBaseline, SamplesEveryTensorReproducibly) {
  torch::set_num_threads(1);
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(test_support::model_dir("tiny"));
  for (torch::ScalarType dtype : {torch::kFloat32, torch::kBFloat16}) {
    Scenario s;
    s.dtype = dtype;
    s.ops.push_back(forward({1, 2, 3, 4, 5, 6}));
    s.ops.push_back(forward({7}));  // a decode step
    const ScenarioResult ref = evaluate_path("reference", s, ck);
    const ErrorBaseline plain = measure_baseline(evaluate_path(baseline_path(dtype), s, ck), ref);
    const ErrorBaseline derived = derive_baseline(s, ck, ref);
    EXPECT_EQ(derived.dtype, plain.dtype);
    EXPECT_EQ(derived.error, plain.error) << "the plain loops' own error, unchanged";
    ASSERT_EQ(derived.stochastic_error.size(), plain.error.size()) << "a stochastic error for every tensor";
    int larger = 0;
    for (const auto& [key, error] : plain.error) {
      const double sampled = derived.stochastic_at(key);
      EXPECT_GT(sampled, 0.0) << key;
      // Rounding an ulp at random is no more accurate than to nearest; it is of the same order.
      EXPECT_LT(sampled, 100 * error + 1e-300) << key;
      larger += sampled > error;
    }
    EXPECT_GT(larger, static_cast<int>(plain.error.size()) / 2) << "the worst of the runs mostly above the plain loops";
    // Deterministic: derived twice, the same numbers (the verdicts replay).
    EXPECT_EQ(derive_baseline(s, ck, ref).stochastic_error, derived.stochastic_error);
  }
}

}  // namespace
}  // namespace mambadiff
