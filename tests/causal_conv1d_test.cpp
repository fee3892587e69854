// aten_ops::causal_conv1d in bf16 rounds once: the convolution and its SiLU in fp32, the result
// stored in bf16, as the fused kernels (kernels/causal_conv1d.cu, causal-conv1d's) do. Rounding
// conv1d's bf16 output and then SiLU's again (HF's torch path, and this op until 2026-12-02) put a
// fuzzed one-channel model's SSM state 3.8x over the bf16 tolerance (docs/fuzz.md).
#include <gtest/gtest.h>

#include "engine/aten_ops.h"

namespace mambadiff {
namespace {

TEST(CausalConv1d, Bf16RoundsTheConvolutionAndSiluOnce) {
  torch::manual_seed(5);
  const int64_t B = 2, T = 64, C = 16, K = 4;
  const auto bf16 = torch::kBFloat16, f32 = torch::kFloat32;
  const torch::Tensor inputs = torch::randn({B, T, C}).to(bf16), window = torch::randn({B, C, K}).to(bf16);
  const torch::Tensor weight = torch::randn({C, K}).to(bf16), bias = torch::randn({C}).to(bf16);
  const auto [out, new_window] = aten_ops::causal_conv1d(inputs, window, weight, bias);
  ASSERT_EQ(out.scalar_type(), bf16);

  // The same convolution as a loop over fp32 copies of the bf16 values, SiLU in fp32, one rounding.
  const torch::Tensor full = torch::cat({window.to(f32), inputs.to(f32).transpose(1, 2)}, 2);  // [B, C, K + T]
  torch::Tensor expect = torch::empty({B, T, C}, f32);
  torch::Tensor twice = torch::empty({B, T, C}, f32);
  for (int64_t t = 0; t < T; ++t) {
    // Output t sees window columns t+1 .. t+K of `full` (the first column is older than K-1 inputs).
    const torch::Tensor pre = (full.narrow(2, t + 1, K) * weight.to(f32)).sum(-1) + bias.to(f32);  // [B, C]
    expect.select(1, t).copy_(torch::silu(pre));
    twice.select(1, t).copy_(torch::silu(pre.to(bf16)).to(f32));  // rounded before SiLU and after
  }
  // fp32 summation order may differ from conv1d's by an fp32 ulp, which moves a bf16 rounding at
  // most one bf16 step, and rarely: all but a handful of elements must be bit-equal.
  const torch::Tensor once = expect.to(bf16);
  const int64_t differ = (out != once).sum().item<int64_t>();
  EXPECT_LE(differ, 4) << "of " << out.numel() << " outputs";
  EXPECT_LE((out.to(f32) - once.to(f32)).abs().max().item<float>(), 0.02f * once.to(f32).abs().max().item<float>());
  // The check bites: rounding twice differs from once on a visible share of the elements.
  EXPECT_GT((twice.to(bf16) != once).sum().item<int64_t>(), 20) << "double rounding must be detectable here";
  EXPECT_TRUE(torch::equal(new_window, full.narrow(2, T, K).to(bf16)));
}

}  // namespace
}  // namespace mambadiff
