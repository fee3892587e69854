// The kernels' branch counters (kernels/kernel_coverage.h, a build with
// -DMAMBADIFF_KERNEL_COVERAGE=ON): launches chosen to take or to avoid each counted branch, and the
// counts read back. Needs a CUDA device and the coverage build; otherwise reported SKIPPED.
// The coordinator runs it on the GPU machine through scripts/gpu_fuzz_campaign.sh.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <array>
#include <cmath>
#include <limits>

#if MAMBADIFF_HAVE_CUDA
#include "kernels/fused_kernels.h"
#include "kernels/kernel_coverage.h"
#endif

namespace mambadiff {
namespace {

#if MAMBADIFF_HAVE_CUDA
using kernels::KernelBranch;

class KernelCoverage : public testing::Test {
 protected:
  void SetUp() override {
    if (!kernels::kernel_coverage_enabled()) GTEST_SKIP() << "built without MAMBADIFF_KERNEL_COVERAGE";
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
    take();  // counts of earlier launches
  }
  std::array<uint32_t, kernels::kKernelBranchCount> take() {
    std::array<uint32_t, kernels::kKernelBranchCount> counts{};
    EXPECT_EQ(kernels::kernel_coverage_take(counts.data()), 0);
    return counts;
  }
  static uint32_t of(const std::array<uint32_t, kernels::kKernelBranchCount>& c, KernelBranch b) {
    return c[static_cast<int>(b)];
  }
  // One scan launch; x, B, C random; dt given.
  void scan(const kernels::ScanShape& s, bool with_initial, float dt_value) {
    const auto f = torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA);
    // x: [B, T, H, P] and B/C: [B, T, G, N] packed in one row per token, as the conv output is.
    const int64_t row = s.heads * s.head_dim + 2 * s.groups * s.state_size;
    const auto xbc = torch::randn({s.batch, std::max<int64_t>(s.tokens, 1), row}, f);
    const auto dt = torch::full({s.batch, std::max<int64_t>(s.tokens, 1), s.heads}, dt_value, f);
    const auto A = -torch::ones({s.heads}, f), D = torch::ones({s.heads}, f);
    const auto initial = torch::randn({s.batch, s.heads, s.head_dim, s.state_size}, f);
    auto y = torch::empty({s.batch, std::max<int64_t>(s.tokens, 1), s.heads, s.head_dim}, f);
    auto final_state = torch::empty_like(initial);
    const float* base = xbc.data_ptr<float>();
    ASSERT_EQ(kernels::ssd_chunk_scan_forward(kernels::Act::kFloat32, s, base, base + s.heads * s.head_dim,
                                        base + s.heads * s.head_dim + s.groups * s.state_size, row,
                                        dt.data_ptr<float>(), A.data_ptr<float>(), D.data_ptr<float>(),
                                        with_initial ? initial.data_ptr<float>() : nullptr, y.data_ptr<float>(),
                                        final_state.data_ptr<float>(), nullptr),
              0);
  }
};

TEST_F(KernelCoverage, ScanTailsBroadcastAndDecode) {
  // head_dim 6 (a block holds 4 rows: its second block is a tail), state 40 (two rounds of 32 lanes,
  // the second partial), 4 heads on 1 group, one token, an initial state.
  scan({1, 1, 4, 6, 1, 40}, true, 0.1f);
  const auto c = take();
  EXPECT_GT(of(c, KernelBranch::kScanHeadDimTail), 0u);
  EXPECT_GT(of(c, KernelBranch::kScanStateTail), 0u);
  EXPECT_GT(of(c, KernelBranch::kScanStateManyRounds), 0u);
  EXPECT_GT(of(c, KernelBranch::kScanGroupBroadcast), 0u);
  EXPECT_GT(of(c, KernelBranch::kScanOneToken), 0u);
  EXPECT_GT(of(c, KernelBranch::kScanInitialState), 0u);
  EXPECT_EQ(of(c, KernelBranch::kScanZeroState), 0u);
  EXPECT_EQ(of(c, KernelBranch::kScanZeroTokens), 0u);
  // 4 heads x 6 rows, one warp each.
  EXPECT_EQ(of(c, KernelBranch::kScanGroupBroadcast), 24u);
}

TEST_F(KernelCoverage, ScanWithoutTailsZeroLengthAndDecayExtremes) {
  // head_dim 8 (two whole blocks), state 32 (one whole round), a group per head, zero tokens, no
  // initial state.
  scan({1, 0, 2, 8, 2, 32}, false, 0.1f);
  auto c = take();
  EXPECT_EQ(of(c, KernelBranch::kScanHeadDimTail), 0u);
  EXPECT_EQ(of(c, KernelBranch::kScanStateTail), 0u);
  EXPECT_EQ(of(c, KernelBranch::kScanStateManyRounds), 0u);
  EXPECT_EQ(of(c, KernelBranch::kScanGroupBroadcast), 0u);
  EXPECT_GT(of(c, KernelBranch::kScanZeroTokens), 0u);
  EXPECT_GT(of(c, KernelBranch::kScanZeroState), 0u);
  EXPECT_EQ(of(c, KernelBranch::kScanDecayUnderflow) + of(c, KernelBranch::kScanDecayOne), 0u);
  scan({1, 3, 2, 8, 2, 32}, false, 0.0f);  // dt 0: exp(0) == 1
  EXPECT_GT(of(take(), KernelBranch::kScanDecayOne), 0u);
  scan({1, 3, 2, 8, 2, 32}, false, 1e4f);  // exp(-1e4) underflows to 0
  EXPECT_GT(of(take(), KernelBranch::kScanDecayUnderflow), 0u);
}

TEST_F(KernelCoverage, DtClampHitsCountedPerElement) {
  const auto f = torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA);
  // softplus: -5 -> 0.0067 (< lo 0.01), 0 -> 0.69 (inside), 3 -> 3.05 (> hi 1), 30 -> 30 (linear, > hi)
  const auto raw = torch::tensor({-5.0f, 0.0f, 3.0f, 30.0f}, f).reshape({1, 4});
  const auto bias = torch::zeros({4}, f);
  auto dt = torch::empty({1, 4}, f);
  ASSERT_EQ(kernels::discretize_dt_forward(kernels::Act::kFloat32, raw.data_ptr<float>(), 4, bias.data_ptr<float>(),
                                           dt.data_ptr<float>(), 1, 4, 0.01f, 1.0f, nullptr),
            0);
  auto c = take();
  EXPECT_EQ(of(c, KernelBranch::kDtClampLow), 1u);
  EXPECT_EQ(of(c, KernelBranch::kDtClampHigh), 2u);
  EXPECT_EQ(of(c, KernelBranch::kDtSoftplusLinear), 1u);
  EXPECT_EQ(of(c, KernelBranch::kDtNoUpperLimit), 0u);
  ASSERT_EQ(kernels::discretize_dt_forward(kernels::Act::kFloat32, raw.data_ptr<float>(), 4, bias.data_ptr<float>(),
                                           dt.data_ptr<float>(), 1, 4, 0.0f,
                                           std::numeric_limits<float>::infinity(), nullptr),
            0);
  c = take();
  EXPECT_EQ(of(c, KernelBranch::kDtClampHigh), 0u);
  EXPECT_EQ(of(c, KernelBranch::kDtNoUpperLimit), 1u);
  // Taken counts are zeroed on the device: nothing ran since.
  c = take();
  for (int i = 0; i < kernels::kKernelBranchCount; ++i) EXPECT_EQ(c[i], 0u) << kernels::kernel_branch_name(i);
}

TEST(KernelCoverageNames, EveryBranchNamed) {
  for (int i = 0; i < kernels::kKernelBranchCount; ++i) EXPECT_STRNE(kernels::kernel_branch_name(i), "?") << i;
  EXPECT_STREQ(kernels::kernel_branch_name(kernels::kKernelBranchCount), "?");
}
#else
TEST(KernelCoverage, BuiltWithoutTheCudaKernels) { GTEST_SKIP() << "built without the CUDA kernels"; }
#endif

}  // namespace
}  // namespace mambadiff
