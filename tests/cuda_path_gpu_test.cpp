// The `cuda` path's fused kernels against the ATen ops of the chunked path (forward values and
// gradients), the whole path's optimizer gradient against chunked-gpu's, and the optimizer on the
// cuda path with its iteration replayed from a CUDA graph against the same loop run eagerly.
// Needs a CUDA device: without one every test here is reported SKIPPED (never passed).
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "engine/aten_ops.h"
#include "engine/errors.h"
#include "engine/chunked_path.h"
#include "harness/path_registry.h"
#include "harness/scoped_env.h"
#include "optimizer/decode_graph.h"
#include "optimizer/delta_loop.h"
#include "optimizer/real_cache_optimizer.h"
#if MAMBADIFF_CUDA_PATH
#include "cuda_path/cuda_path.h"
#include "cuda_path/fused_ops.h"
#include "kernels/fused_kernels.h"
#include "kernels/guard_region.h"
#include "tests/test_support.h"
#endif

namespace mambadiff {
namespace {

namespace fs = std::filesystem;

#if MAMBADIFF_CUDA_PATH

class FusedOps : public testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
    torch::manual_seed(1234);
  }
  torch::Tensor randn(torch::IntArrayRef shape, double scale = 1.0) {
    return (torch::randn(shape, opts_) * scale).contiguous();
  }
  torch::TensorOptions opts_ = torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA);
};

// max|a - b| / max|b|: the harness's error unit.
double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  const double scale = std::max(b.abs().max().item<double>(), 1e-30);
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>() / scale;
}

// Gradients of sum(out * probe) with respect to `inputs`, for the fused and the ATen version.
std::vector<torch::Tensor> grads_of(const torch::Tensor& out, const torch::Tensor& probe,
                                    const std::vector<torch::Tensor>& inputs) {
  return torch::autograd::grad({(out.to(torch::kFloat32) * probe).sum()}, inputs);
}

constexpr double kFp32Tol = 2e-5;  // fp32 sums in another order than ATen's (a few ulps of 1e-7 per term)

// The chunked kernel's two product modes for bf16 runs (MAMBADIFF_SCAN_PRODUCTS, cuda_path/fused_ops.cpp)
// and how far each may be from the ATen scan's fp32 math on the same bf16 inputs: split TF32 keeps
// ~21 bits a product (1e-4, as fp32-class); bf16 products round each computed operand once to bf16
// (unit roundoff u = 2^-8): 2u = 2^-7 of the scale, the rule of kernels/check/ssd_chunked_scan_check.cu
// (which also checks the element-wise rounding bound). Measured on an H200 (2026-12-02): up to
// 3.95e-3 here.
struct ScanProducts {
  const char* mode;
  double tolerance;
};
constexpr ScanProducts kScanProducts[] = {{"split-tf32", 1e-4}, {"bf16", 0x1p-7}};

TEST_F(FusedOps, RmsNormForwardAndBackwardMatchAten) {
  const torch::Tensor x = randn({2, 5, 96}).requires_grad_(true), w = randn({96});
  const torch::Tensor ours = fused::rms_norm(x, w, 1e-5), theirs = aten_ops::rms_norm(x, w, 1e-5);
  EXPECT_LT(rel_err(ours, theirs), kFp32Tol);
  const torch::Tensor probe = randn({2, 5, 96});
  EXPECT_LT(rel_err(grads_of(ours, probe, {x})[0], grads_of(theirs, probe, {x})[0]), kFp32Tol);
  // bf16 weights with the fp32 residual stream (the final norm of a bf16 run).
  const torch::Tensor wb = w.to(torch::kBFloat16);
  EXPECT_LT(rel_err(fused::rms_norm(x, wb, 1e-5), aten_ops::rms_norm(x, wb, 1e-5)), 1e-2);
}

TEST_F(FusedOps, GatedNormUngroupedAndGroupedMatchAten) {
  for (int64_t group : {64, 32}) {
    const torch::Tensor proj = randn({2, 3, 100}).requires_grad_(true);  // gate is a column slice
    const torch::Tensor gate = proj.narrow(2, 10, 64), y = randn({2, 3, 64}).requires_grad_(true), w = randn({64});
    const torch::Tensor ours = fused::gated_rms_norm(y, gate, w, 1e-5, group);
    const torch::Tensor theirs = aten_ops::gated_rms_norm(y, gate, w, 1e-5, group);
    EXPECT_LT(rel_err(ours, theirs), kFp32Tol) << "group " << group;
    const torch::Tensor probe = randn({2, 3, 64});
    const auto g1 = grads_of(ours, probe, {y, proj}), g2 = grads_of(theirs, probe, {y, proj});
    EXPECT_LT(rel_err(g1[0], g2[0]), kFp32Tol) << "grad y, group " << group;
    EXPECT_LT(rel_err(g1[1], g2[1]), kFp32Tol) << "grad gate, group " << group;
  }
}

TEST_F(FusedOps, CausalConvPrefillContinueAndUpdateMatchAten) {
  for (int64_t T : {1, 9}) {
    const torch::Tensor proj = randn({2, T, 80}).requires_grad_(true);
    const torch::Tensor xBC = proj.narrow(2, 16, 48);  // a column slice, as in the model
    const torch::Tensor window = randn({2, 48, 4}), w = randn({48, 4}, 0.5), bias = randn({48});
    auto [out, new_window] = fused::causal_conv1d(xBC, window, w, bias);
    auto [ref, ref_window] = aten_ops::causal_conv1d(xBC, window, w, bias);
    EXPECT_LT(rel_err(out, ref), kFp32Tol) << "T " << T;
    EXPECT_TRUE(torch::equal(new_window, ref_window)) << "T " << T;
    const torch::Tensor probe = randn({2, T, 48});
    EXPECT_LT(rel_err(grads_of(out, probe, {proj})[0], grads_of(ref, probe, {proj})[0]), kFp32Tol) << "T " << T;
  }
  // No bias (use_conv_bias false).
  const torch::Tensor x = randn({1, 3, 8}), window = torch::zeros({1, 8, 4}, opts_), w = randn({8, 4});
  EXPECT_LT(rel_err(fused::causal_conv1d(x, window, w, {}).first, aten_ops::causal_conv1d(x, window, w, {}).first),
            kFp32Tol);
}

TEST_F(FusedOps, DtDiscretizeClampsAndPassesGradientsOnlyInside) {
  const torch::Tensor proj = randn({2, 7, 20}, 3.0).requires_grad_(true);
  const torch::Tensor raw = proj.narrow(2, 12, 6), bias = randn({6});
  for (auto [lo, hi] : std::vector<std::pair<double, double>>{{0.0, INFINITY}, {0.05, 0.5}}) {
    const torch::Tensor ours = fused::discretize_dt(raw, bias, lo, hi), theirs = aten_ops::discretize_dt(raw, bias, lo, hi);
    EXPECT_LT(rel_err(ours, theirs), kFp32Tol);
    const torch::Tensor probe = randn({2, 7, 6});
    EXPECT_LT(rel_err(grads_of(ours, probe, {proj})[0], grads_of(theirs, probe, {proj})[0]), kFp32Tol);
  }
}

struct ScanCase {
  int64_t B, T, H, P, G, N;
};

TEST_F(FusedOps, ScanWithInitialStateMatchesTheChunkedScan) {
  for (const ScanCase c : {ScanCase{2, 37, 4, 8, 2, 16}, ScanCase{1, 300, 24, 64, 1, 128}}) {
    const int64_t I = c.H * c.P, GN = c.G * c.N;
    const torch::Tensor xbc = randn({c.B, c.T, I + 2 * GN});  // x, B, C as slices of one row
    const torch::Tensor x = xbc.narrow(2, 0, I).view({c.B, c.T, c.H, c.P});
    const torch::Tensor Bm = xbc.narrow(2, I, GN).view({c.B, c.T, c.G, c.N});
    const torch::Tensor Cm = xbc.narrow(2, I + GN, GN).view({c.B, c.T, c.G, c.N});
    const torch::Tensor dt = torch::rand({c.B, c.T, c.H}, opts_) * 0.1, A = -torch::rand({c.H}, opts_) - 0.5;
    const torch::Tensor D = randn({c.H}), initial = randn({c.B, c.H, c.P, c.N});
    auto [y, final_state] = fused::ssd_chunk_scan(x, dt, A, Bm, Cm, D, initial);
    auto [ry, rfinal] = aten_ops::ssd_chunk_scan(x, dt, A, Bm, Cm, D, initial, 64);
    EXPECT_LT(rel_err(y, ry), 1e-4) << "T " << c.T;
    EXPECT_LT(rel_err(final_state, rfinal), 1e-4) << "T " << c.T;
  }
}

// The chunked SSD kernel (T > 1) at chunk sizes that split the sequence every way: one token per
// chunk, an odd size, the checkpoints' 256, and one longer than the sequence.
TEST_F(FusedOps, ChunkedKernelMatchesTheChunkedScanAtAnyChunkSize) {
  const ScanCase c{2, 300, 6, 24, 3, 40};
  const int64_t I = c.H * c.P, GN = c.G * c.N;
  for (const bool bf16 : {false, true}) {
    torch::Tensor xbc = randn({c.B, c.T, I + 2 * GN});
    if (bf16) xbc = xbc.to(torch::kBFloat16);
    const torch::Tensor x = xbc.narrow(2, 0, I).view({c.B, c.T, c.H, c.P});
    const torch::Tensor Bm = xbc.narrow(2, I, GN).view({c.B, c.T, c.G, c.N});
    const torch::Tensor Cm = xbc.narrow(2, I + GN, GN).view({c.B, c.T, c.G, c.N});
    const torch::Tensor dt = torch::rand({c.B, c.T, c.H}, opts_) * 0.1, A = -torch::rand({c.H}, opts_) - 0.5;
    const torch::Tensor D = randn({c.H}), initial = randn({c.B, c.H, c.P, c.N});
    for (const ScanProducts products : kScanProducts) {
      const ScopedEnv scoped("MAMBADIFF_SCAN_PRODUCTS", products.mode);
      const double tol = bf16 ? products.tolerance : 1e-4;  // fp32 runs: fp32 FMAs in either mode
      for (const int64_t chunk : {1, 7, 256, 1000}) {
        auto [y, final_state] = fused::ssd_chunk_scan(x, dt, A, Bm, Cm, D, initial, {}, chunk);
        auto [ry, rfinal] = aten_ops::ssd_chunk_scan(x, dt, A, Bm, Cm, D, initial, 64);
        const std::string what = fmt::format("chunk {} {} ({} products)", chunk, bf16 ? "bf16" : "fp32", products.mode);
        EXPECT_LT(rel_err(y, ry), tol) << what;
        EXPECT_LT(rel_err(final_state, rfinal), tol) << what;
      }
    }
  }
}

// 70,000 tokens in one prefill: past the ~61K where mamba_ssm #1015's 32-bit offsets overflowed.
// The kernel against the chunked path's ATen scan on the same GPU, bf16 inputs.
TEST_F(FusedOps, ChunkedKernelSeventyThousandTokenPrefillMatchesTheChunkedPath) {
  const ScanCase c{1, 70000, 4, 64, 1, 128};
  const int64_t I = c.H * c.P, GN = c.G * c.N;
  const torch::Tensor xbc = randn({c.B, c.T, I + 2 * GN}).to(torch::kBFloat16);
  const torch::Tensor x = xbc.narrow(2, 0, I).view({c.B, c.T, c.H, c.P});
  const torch::Tensor Bm = xbc.narrow(2, I, GN).view({c.B, c.T, c.G, c.N});
  const torch::Tensor Cm = xbc.narrow(2, I + GN, GN).view({c.B, c.T, c.G, c.N});
  const torch::Tensor dt = torch::rand({c.B, c.T, c.H}, opts_) * 0.05 + 0.001, A = -torch::rand({c.H}, opts_) - 0.5;
  const torch::Tensor D = randn({c.H}), initial = randn({c.B, c.H, c.P, c.N});
  auto [ry, rfinal] = aten_ops::ssd_chunk_scan(x, dt, A, Bm, Cm, D, initial, 256);
  for (const ScanProducts products : kScanProducts) {
    const ScopedEnv scoped("MAMBADIFF_SCAN_PRODUCTS", products.mode);
    auto [y, final_state] = fused::ssd_chunk_scan(x, dt, A, Bm, Cm, D, initial, {}, 256);
    EXPECT_LT(rel_err(y, ry), products.tolerance) << products.mode;
    EXPECT_LT(rel_err(final_state, rfinal), products.tolerance) << products.mode;
    // The last tokens, not only the scale-dominating ones: past token 65,536 the rows must match too.
    EXPECT_LT(rel_err(y.narrow(1, 65536, c.T - 65536), ry.narrow(1, 65536, c.T - 65536)), products.tolerance)
        << products.mode;
  }
}

TEST_F(FusedOps, DecodeStepForwardAndBackwardMatchTheStateUpdate) {
  // The last case has batch × heads >= 1024: 8 state rows a warp (kernels/state_update_rows.cuh).
  for (const ScanCase c : {ScanCase{2, 1, 4, 8, 2, 16}, ScanCase{1, 1, 24, 64, 1, 128}, ScanCase{3, 1, 8, 16, 4, 40},
                           ScanCase{16, 1, 64, 72, 2, 64}}) {
    const int64_t I = c.H * c.P, GN = c.G * c.N;
    const torch::Tensor xbc = randn({c.B, 1, I + 2 * GN}).requires_grad_(true);
    const torch::Tensor x = xbc.narrow(2, 0, I).reshape({c.B, 1, c.H, c.P});
    const torch::Tensor Bm = xbc.narrow(2, I, GN).reshape({c.B, 1, c.G, c.N});
    const torch::Tensor Cm = xbc.narrow(2, I + GN, GN).reshape({c.B, 1, c.G, c.N});
    const torch::Tensor dt = (torch::rand({c.B, 1, c.H}, opts_) * 0.1 + 0.01).requires_grad_(true);
    const torch::Tensor A = -torch::rand({c.H}, opts_) - 0.5, D = randn({c.H});
    const torch::Tensor state = randn({c.B, c.H, c.P, c.N}).requires_grad_(true);
    auto [y, s1] = fused::ssd_chunk_scan(x, dt, A, Bm, Cm, D, state);
    auto [ry, rs1] = aten_ops::selective_state_update(x.squeeze(1), dt.squeeze(1), A, Bm.squeeze(1), Cm.squeeze(1), D,
                                                      state);
    EXPECT_LT(rel_err(y.squeeze(1), ry), kFp32Tol);
    EXPECT_LT(rel_err(s1, rs1), kFp32Tol);
    // Gradients through both outputs (the next teacher-forced step reads the new state).
    const torch::Tensor py = randn({c.B, c.H, c.P}), ps = randn({c.B, c.H, c.P, c.N});
    const auto ours = torch::autograd::grad({(y.squeeze(1) * py).sum() + (s1 * ps).sum()}, {xbc, dt, state});
    const auto theirs = torch::autograd::grad({(ry * py).sum() + (rs1 * ps).sum()}, {xbc, dt, state});
    const char* names[] = {"x/B/C", "dt", "state"};
    for (size_t i = 0; i < 3; ++i) EXPECT_LT(rel_err(ours[i], theirs[i]), 1e-4) << names[i] << " H " << c.H;
  }
}

// The fused decode step (conv + dt + state update in one kernel each way, fused::decode_step)
// against the three fused ops it replaces, run one after the other on copies of the same cache:
// forward bit for bit (the same arithmetic: the conv output rounded to the activation dtype as the
// conv kernel stores it), three steps in a row (the kernel's per-group counters start from zero
// on every launch); gradients to the in_proj row and the state within two fp32 summation orders
// (the heads of a group add their B/C gradients in head order, ATen's sum in its own).
struct DecodeStepCase {
  int64_t B, H, P, G, N, K;
  bool bias;
  double dt_min, dt_max;
};

TEST_F(FusedOps, FusedDecodeStepEqualsTheThreeKernels) {
  const DecodeStepCase cases[] = {
      {1, 24, 64, 1, 128, 4, true, 0.0, INFINITY},     // the 130m shape at batch 1
      {2, 8, 16, 4, 40, 4, false, 0.05, 0.5},         // groups of 2 heads, N not a multiple of 32, dt clamped
      {3, 6, 7, 3, 16, 2, true, 0.0, 0.1},            // head_dim tail, conv width 2
      {16, 64, 72, 2, 64, 4, true, 0.0, INFINITY},    // batch × heads >= 1024: 8 rows a warp, a rows tail
  };
  for (const auto act : {torch::kFloat32, torch::kBFloat16}) {
    for (const DecodeStepCase& c : cases) {
      SCOPED_TRACE(fmt::format("{} b{} h{} p{} g{} n{} k{}", c10::toString(act), c.B, c.H, c.P, c.G, c.N, c.K));
      const int64_t I = c.H * c.P, C = I + 2 * c.G * c.N, width = I + C + c.H + 3;  // gate, xBC, dt, 3 spare
      const torch::Tensor conv_w = (torch::randn({C, c.K}, opts_) * 0.5).to(act);
      const torch::Tensor conv_b = c.bias ? torch::randn({C}, opts_).to(act) : torch::Tensor();
      const fused::DecodeStepWeights w{conv_w, conv_b, randn({c.H}) - 1.0, -torch::rand({c.H}, opts_) - 0.5, randn({c.H}),
                                       c.dt_min, c.dt_max, c.G};
      const torch::Tensor window0 = torch::randn({c.B, C, c.K}, opts_).to(act), state0 = randn({c.B, c.H, c.P, c.N});
      const auto rows = [&](const torch::Tensor& proj) {
        return std::make_pair(proj.narrow(2, I, C), proj.narrow(2, I + C, c.H));
      };
      // The three ops, as CudaPath ran them: conv (window in place), dt, scan at T = 1 (state in place).
      const auto separate = [&](const torch::Tensor& proj, torch::Tensor& window, const torch::Tensor& state) {
        const auto [xBC_raw, dt_raw] = rows(proj);
        auto [xBC, new_window] = fused::causal_conv1d(xBC_raw, window, conv_w, conv_b, torch::GradMode::is_enabled() ? torch::Tensor() : window);
        if (!new_window.is_same(window)) {
          torch::NoGradGuard no_grad;
          window.copy_(new_window);
        }
        const auto parts = xBC.split_with_sizes({I, c.G * c.N, c.G * c.N}, -1);
        const torch::Tensor dt = fused::discretize_dt(dt_raw, w.dt_bias, c.dt_min, c.dt_max);
        const bool tracked = torch::GradMode::is_enabled() && state.requires_grad();
        auto [y, s1] = fused::ssd_chunk_scan(parts[0].reshape({c.B, 1, c.H, c.P}), dt, w.A, parts[1].reshape({c.B, 1, c.G, c.N}),
                                             parts[2].reshape({c.B, 1, c.G, c.N}), w.D, state,
                                             tracked || torch::GradMode::is_enabled() ? torch::Tensor() : state);
        return std::make_pair(y.squeeze(1), s1);
      };
      {  // forward, no gradient: in place, three steps
        torch::NoGradGuard no_grad;
        torch::Tensor win_f = window0.clone(), st_f = state0.clone(), win_s = window0.clone(), st_s = state0.clone();
        for (int step = 0; step < 3; ++step) {
          SCOPED_TRACE(step);
          const torch::Tensor proj = torch::randn({c.B, 1, width}, opts_).to(act);
          const auto [xBC_raw, dt_raw] = rows(proj);
          ASSERT_TRUE(fused::decode_step_supported(xBC_raw, win_f, st_f, w));
          const auto [y_f, s_f] = fused::decode_step(xBC_raw, dt_raw, win_f, st_f, w);
          EXPECT_TRUE(s_f.is_same(st_f)) << "the state is updated in place";
          const auto [y_s, s_s] = separate(proj, win_s, st_s);
          EXPECT_TRUE(s_s.is_same(st_s));
          EXPECT_TRUE(torch::equal(win_f, win_s)) << "window";
          EXPECT_TRUE(torch::equal(y_f, y_s)) << "y, max diff " << (y_f - y_s).abs().max().item<double>();
          EXPECT_TRUE(torch::equal(st_f, st_s)) << "state, max diff " << (st_f - st_s).abs().max().item<double>();
        }
      }
      {  // under autograd: a new state, the read state kept by the kernel; gradients through both outputs
        const torch::Tensor proj = torch::randn({c.B, 1, width}, opts_).to(act).requires_grad_(true);
        const torch::Tensor state = state0.clone().requires_grad_(true);
        torch::Tensor win_f = window0.clone(), win_s = window0.clone();
        const auto [xBC_raw, dt_raw] = rows(proj);
        const auto [y_f, s_f] = fused::decode_step(xBC_raw, dt_raw, win_f, state, w);
        EXPECT_FALSE(s_f.is_same(state));
        const auto [y_s, s_s] = separate(proj, win_s, state);
        EXPECT_TRUE(torch::equal(win_f, win_s)) << "window";
        EXPECT_TRUE(torch::equal(y_f, y_s)) << "y";
        EXPECT_TRUE(torch::equal(s_f, s_s)) << "state";
        {
          torch::NoGradGuard no_grad;  // the cache's state is overwritten before the backward (as in a layer)
          state.detach().fill_(123.0f);
        }
        const torch::Tensor py = randn({c.B, c.H, c.P}), ps = randn({c.B, c.H, c.P, c.N});
        const auto g_f = torch::autograd::grad({(y_f * py).sum() + (s_f * ps).sum()}, {proj, state});
        {
          torch::NoGradGuard no_grad;
          state.detach().copy_(state0);
        }
        const torch::Tensor state2 = state0.clone().requires_grad_(true);
        torch::Tensor win_s2 = window0.clone();
        const auto [y_s2, s_s2] = separate(proj, win_s2, state2);
        const auto g_s = torch::autograd::grad({(y_s2 * py).sum() + (s_s2 * ps).sum()}, {proj, state2});
        const double tol = act == torch::kFloat32 ? 1e-5 : 2e-2;  // bf16: a B/C sum rounded to bf16 in another order
        EXPECT_LT(rel_err(g_f[0].narrow(2, I, C), g_s[0].narrow(2, I, C)), tol) << "grad xBC_raw";
        EXPECT_LT(rel_err(g_f[0].narrow(2, I + C, c.H), g_s[0].narrow(2, I + C, c.H)), tol) << "grad dt_raw";
        EXPECT_LT(rel_err(g_f[1], g_s[1]), 1e-5) << "grad state";
        EXPECT_GT(g_f[0].narrow(2, I + C, c.H).abs().max().item<double>(), 0.0) << "dt gets a gradient";
      }
    }
  }
}

// The decode step's products with their norms folded in (fused::norm_in_proj,
// fused::gated_norm_out_proj) against the ops they replace: the norms round where the separate
// kernels store, the products sum in fp32 in another order than cuBLAS (fp32: a few ulps of the
// row's Σ|w·v|; bf16: one bf16 rounding of the output apart at most, 2^-8).
TEST_F(FusedOps, DecodeProductsWithTheirNormsMatchTheOps) {
  for (const auto act : {torch::kFloat32, torch::kBFloat16}) {
    for (const int64_t B : {int64_t{1}, int64_t{3}}) {
      for (const bool fp32_residual : {true, false}) {
        if (act == torch::kFloat32 && !fp32_residual) continue;
        SCOPED_TRACE(fmt::format("{} b{} {} residual", c10::toString(act), B, fp32_residual ? "fp32" : "bf16"));
        const double tol = act == torch::kFloat32 ? 1e-5 : 1e-2;
        const int64_t D = 96, I = 192, width = 2 * I + 2 * 16 + 6;
        const auto res_dtype = fp32_residual ? torch::kFloat32 : act;
        const torch::Tensor x = randn({B, 1, D}).to(res_dtype), norm_w = randn({D}).to(act);
        const torch::Tensor in_w = (randn({width, D}) * 0.1).to(act), in_b = randn({width}).to(act);
        for (const torch::Tensor& bias : {torch::Tensor(), in_b}) {
          const torch::Tensor ours = fused::norm_in_proj(x, norm_w, 1e-5, in_w, bias);
          const torch::Tensor theirs = torch::linear(fused::rms_norm(x.to(act), norm_w, 1e-5), in_w, bias);
          EXPECT_EQ(ours.scalar_type(), theirs.scalar_type());
          EXPECT_LT(rel_err(ours, theirs), tol) << "in_proj, bias " << bias.defined();
        }
        const torch::Tensor proj = randn({B, 1, width}).to(act), gate = proj.narrow(2, 3, I), y = randn({B, 1, I});
        const torch::Tensor gn_w = randn({I}).to(act), out_w = (randn({D, I}) * 0.1).to(act);
        for (const int64_t group : {I, I / 4}) {
          const torch::Tensor ours = fused::gated_norm_out_proj(y, gate, gn_w, 1e-5, group, out_w, x);
          const torch::Tensor normed = fused::gated_rms_norm(y, gate, gn_w, 1e-5, group);
          const torch::Tensor theirs = fp32_residual && act != torch::kFloat32
                                           ? x + torch::linear(normed, out_w)
                                           : torch::addmm(x.reshape({B, D}), normed.reshape({B, I}), out_w.t()).view(x.sizes());
          EXPECT_EQ(ours.scalar_type(), res_dtype);
          EXPECT_LT(rel_err(ours, theirs), tol) << "out_proj, group " << group;
        }
      }
    }
  }
  // Under autograd the kernels are not used (no backward): the path falls back to the ops.
  const torch::Tensor x = randn({1, 1, 64}).requires_grad_(true), w = randn({64, 64});
  EXPECT_FALSE(fused::norm_in_proj_supported(x, randn({64}), w, {}));
  EXPECT_TRUE(fused::norm_in_proj_supported(x.detach(), randn({64}), w, {}));
  EXPECT_FALSE(fused::norm_in_proj_supported(randn({1, 2, 64}), randn({64}), w, {})) << "two tokens";
}

// The whole cuda path with the decode step fused (the default) and op by op
// (MAMBADIFF_DECODE_FUSION=off): the same cache states bit for bit except the products' summation
// order (logits and states within fp32 rounding); another value is an InputError naming the variable.
TEST_F(FusedOps, DecodeFusionOnAndOffAgree) {
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(test_support::model_dir("grouped"));
  CudaPath cuda(ck, torch::kFloat32, torch::Device(torch::kCUDA, 0));
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> logits, states;
  for (const char* mode : {"on", "off"}) {
    ScopedEnv fusion("MAMBADIFF_DECODE_FUSION", mode);
    Mamba2Cache cache = cuda.new_cache(2);
    cuda.forward(torch::tensor({3, 1, 4, 1, 5, 9, 2, 6}, torch::kInt64).view({2, 4}), cache);
    torch::Tensor l;
    for (int64_t t : {7, 3, 8}) l = cuda.forward(torch::full({2, 1}, t, torch::kInt64), cache).logits;
    logits.push_back(l);
    states.push_back(cache.ssm_states.back().clone());
  }
  EXPECT_LT(rel_err(logits[0], logits[1]), kFp32Tol);
  EXPECT_LT(rel_err(states[0], states[1]), kFp32Tol);
  Mamba2Cache cache = cuda.new_cache(1);
  cuda.forward(torch::tensor({3, 1}, torch::kInt64).view({1, 2}), cache);
  ScopedEnv bogus("MAMBADIFF_DECODE_FUSION", "maybe");  // read by every forward: set after the prefill
  try {
    cuda.forward(torch::tensor({{4}}, torch::kInt64), cache);
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("MAMBADIFF_DECODE_FUSION='maybe'"), std::string::npos) << e.what();
  }
}

// The optimizer's statistics in one kernel (fused::delta_statistics) against the ATen version:
// rank and margin exactly (the same float64 comparisons and max), ‖Δ‖₂ to float64 rounding (another
// summation order), over rows with ties, infinities and NaN, and the 130m vocabulary.
TEST_F(FusedOps, DeltaStatisticsKernelEqualsTheAtenOps) {
  const auto f64 = opts_.dtype(torch::kFloat64);
  for (const int64_t V : {int64_t{5}, int64_t{50288}}) {
    std::vector<torch::Tensor> rows;
    for (int r = 0; r < 4; ++r) rows.push_back(randn({V}));
    rows[1][3] = rows[1][0];  // a tie with target 0
    std::vector<int64_t> target = {V - 1, 0, 2, 1};
    const std::vector<torch::Tensor> deltas = {randn({1, 24, 64, 128}), randn({1, 3, 7, 5}, 0.1)};
    const torch::Tensor loss = randn({1}).reshape({});
    for (int variant = 0; variant < 3; ++variant) {
      SCOPED_TRACE(fmt::format("V {} variant {}", V, variant));
      std::vector<torch::Tensor> r = rows;
      if (variant == 1) r[2] = r[2].clone().index_fill_(0, torch::tensor({1}, opts_.dtype(torch::kInt64)), INFINITY);
      if (variant == 2) r[3] = r[3].clone().index_fill_(0, torch::tensor({V - 1}, opts_.dtype(torch::kInt64)), NAN);
      torch::Tensor ours = torch::full({4}, -7.0, f64);
      ASSERT_TRUE(fused::delta_statistics(r, target, deltas, loss, ours));
      const torch::Tensor theirs = delta_statistics(r, target, deltas, loss);
      EXPECT_EQ(ours[0].item<double>(), theirs[0].item<double>()) << "loss";
      EXPECT_EQ(ours[1].item<double>(), theirs[1].item<double>()) << "rank";
      const double m1 = ours[2].item<double>(), m2 = theirs[2].item<double>();
      EXPECT_TRUE(m1 == m2 || (std::isnan(m1) && std::isnan(m2))) << "margin " << m1 << " vs " << m2;
      EXPECT_NEAR(ours[3].item<double>(), theirs[3].item<double>(), 1e-12 * theirs[3].item<double>()) << "norm";
      if (variant == 2) {
        EXPECT_EQ(ours[1].item<double>(), static_cast<double>(V + 1));
      }
    }
  }
  // What the kernel does not take is left to the ATen ops: nothing written.
  torch::Tensor stats = torch::full({4}, -7.0, f64);
  EXPECT_FALSE(fused::delta_statistics({randn({8}).to(torch::kFloat64)}, {0}, {}, randn({1}).reshape({}), stats));
  EXPECT_EQ(stats[0].item<double>(), -7.0);
}

// The whole path: d loss / d Δ through the cuda path equals chunked-gpu's (fp32, within the
// error of two fp32 summation orders).
TEST_F(FusedOps, OptimizerGradientMatchesChunkedGpu) {
  for (const char* model : {"tiny", "grouped", "bytes"}) {
    const Mamba2Checkpoint ck = Mamba2Checkpoint::load(test_support::model_dir(model));
    CudaPath cuda(ck, torch::kFloat32, torch::Device(torch::kCUDA, 0));
    ChunkedPath chunked(ck, torch::kFloat32, torch::Device(torch::kCUDA, 0));
    std::vector<torch::Tensor> grads;
    for (ExecutionPath* path : std::vector<ExecutionPath*>{&cuda, &chunked}) {
      Mamba2Cache cache = path->new_cache(1);
      {
        torch::NoGradGuard no_grad;
        path->forward(torch::tensor({3, 1, 4, 1, 5, 9}, torch::kInt64).view({1, 6}), cache);
      }
      const int64_t layer = ck.config.num_hidden_layers / 2;
      const torch::Tensor delta = torch::zeros_like(cache.ssm_states[static_cast<size_t>(layer)]).requires_grad_(true);
      auto& state = cache.ssm_states[static_cast<size_t>(layer)];
      state.copy_(state.detach().clone() + delta);
      const torch::Tensor l1 = path->forward(torch::tensor({2}, torch::kInt64).view({1, 1}), cache).logits[0][0];
      const torch::Tensor l2 = path->forward(torch::tensor({6}, torch::kInt64).view({1, 1}), cache).logits[0][0];
      const torch::Tensor loss = -torch::log_softmax(l1, 0)[7] - torch::log_softmax(l2, 0)[8];
      grads.push_back(torch::autograd::grad({loss}, {delta})[0]);
    }
    EXPECT_GT(grads[1].abs().max().item<double>(), 0.0) << model;
    EXPECT_LT(rel_err(grads[0], grads[1]), 1e-4) << model;
  }
}

// bf16 activations with the fp32 scan parameters (dt_bias, A, D stay fp32 in every run dtype):
// each fused op against the same ATen op in bf16, at bf16's resolution.
TEST_F(FusedOps, Bfloat16ActivationsWithFp32ScanParametersMatchAten) {
  const auto bf16 = [](const torch::Tensor& t) { return t.to(torch::kBFloat16); };
  constexpr double kBf16Tol = 3e-2;  // a few bf16 ulps (2^-8) of rounding between the two orders
  const torch::Tensor proj = bf16(randn({2, 5, 120}));
  // dt: bf16 raw, fp32 bias.
  const torch::Tensor raw = proj.narrow(2, 100, 6), dt_bias = randn({6});
  EXPECT_LT(rel_err(fused::discretize_dt(raw, dt_bias, 0.0, INFINITY), aten_ops::discretize_dt(raw, dt_bias, 0.0, INFINITY)),
            kFp32Tol);
  // conv: bf16 inputs, window, weight, bias.
  const torch::Tensor xBC = proj.narrow(2, 8, 64), window = bf16(randn({2, 64, 4})), w = bf16(randn({64, 4}, 0.5));
  const torch::Tensor cb = bf16(randn({64}));
  EXPECT_LT(rel_err(fused::causal_conv1d(xBC, window, w, cb).first, aten_ops::causal_conv1d(xBC, window, w, cb).first),
            kBf16Tol);
  // scan: bf16 x/B/C, fp32 dt, A, D, state.
  const torch::Tensor xbc = bf16(randn({2, 5, 4 * 8 + 2 * 2 * 16}));
  const torch::Tensor x = xbc.narrow(2, 0, 32).view({2, 5, 4, 8}), Bm = xbc.narrow(2, 32, 32).view({2, 5, 2, 16});
  const torch::Tensor Cm = xbc.narrow(2, 64, 32).view({2, 5, 2, 16});
  const torch::Tensor dt = torch::rand({2, 5, 4}, opts_) * 0.1, A = -torch::rand({4}, opts_) - 0.5, D = randn({4});
  const torch::Tensor initial = randn({2, 4, 8, 16});
  auto [ry, rs1] = aten_ops::ssd_chunk_scan(x, dt, A, Bm, Cm, D, initial, 4);
  for (const ScanProducts products : kScanProducts) {  // against fp32 math on the same bf16 inputs
    const ScopedEnv scoped("MAMBADIFF_SCAN_PRODUCTS", products.mode);
    auto [y, s1] = fused::ssd_chunk_scan(x, dt, A, Bm, Cm, D, initial);
    EXPECT_LT(rel_err(y, ry), products.tolerance) << products.mode;
    EXPECT_LT(rel_err(s1, rs1), products.tolerance) << products.mode;
  }
  {
    const ScopedEnv scoped("MAMBADIFF_SCAN_PRODUCTS", "tf32");  // not a mode: one line naming the variable
    EXPECT_THROW(fused::ssd_chunk_scan(x, dt, A, Bm, Cm, D, initial), InputError);
  }
  // norms: bf16 weights; the fp32 residual into bf16 weights; the gated norm's bf16 gate.
  const torch::Tensor h = bf16(randn({2, 5, 96})), nw = bf16(randn({96}));
  EXPECT_LT(rel_err(fused::rms_norm(h, nw, 1e-5), aten_ops::rms_norm(h, nw, 1e-5)), kBf16Tol);
  const torch::Tensor yy = randn({2, 5, 64}), gate = proj.narrow(2, 0, 64), gw = bf16(randn({64}));
  EXPECT_LT(rel_err(fused::gated_rms_norm(yy, gate, gw, 1e-5, 64), aten_ops::gated_rms_norm(yy, gate, gw, 1e-5, 64)),
            kBf16Tol);
}

// The optimizer on the cuda path: deployed rank 1 with simulated == deployed, the cache restored.
TEST_F(FusedOps, OptimizerOnCudaPathReachesDeployedRankOne) {
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(test_support::model_dir("tiny"));
  OptimizeOptions o;
  o.prompt = {3, 1, 4, 1, 5, 9, 2, 6};
  o.target = {7, 3};
  o.layers = {0, ck.config.num_hidden_layers - 1};
  o.steps = 200;
  o.path = "cuda";
  o.margin = 0.5;
  const OptimizeResult r = optimize_delta(ck, o);
  EXPECT_EQ(r.deployed.rank, 1);
  EXPECT_EQ(r.simulated.rank, r.deployed.rank);
  EXPECT_TRUE(r.restore_bit_identical);
  EXPECT_TRUE(r.zero_delta_gate_passed);
  EXPECT_EQ(r.deployed_rank_by_path.at("chunked"), 1);
}

// Whole-model decode replayed from one graph (optimizer/decode_graph.h) computes bit for bit what
// the eager forward computes, on a batch of 2, step after step: logits, every layer's conv and
// SSM state, seqlen_offset; and building it leaves the cache untouched.
TEST_F(FusedOps, DecodeGraphReplayEqualsEagerDecodeBitForBit) {
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(test_support::model_dir("grouped"));
  for (const char* name : {"cuda", "chunked-gpu"}) {
    auto path = make_path(name, ck, torch::kFloat32);
    torch::NoGradGuard no_grad;
    Mamba2Cache eager = path->new_cache(2), replayed = path->new_cache(2);
    const torch::Tensor prompt = torch::tensor({3, 1, 4, 1, 5, 9, 2, 6, 5, 3}, torch::kInt64).view({2, 5});
    path->forward(prompt, eager);
    path->forward(prompt, replayed);
    const auto before = replayed.snapshot();
    DecodeGraph graph(*path, replayed);
    for (size_t l = 0; l < before.ssm_states.size(); ++l) {
      EXPECT_TRUE(torch::equal(replayed.ssm_states[l], before.ssm_states[l])) << name << " construction, layer " << l;
      EXPECT_TRUE(torch::equal(replayed.conv_states[l], before.conv_states[l])) << name << " construction, layer " << l;
    }
    EXPECT_EQ(replayed.seqlen_offset, before.seqlen_offset);
    for (const auto& ids : std::vector<std::vector<int64_t>>{{7, 2}, {0, 9}, {4, 4}}) {
      const torch::Tensor tokens = torch::tensor(ids, torch::kInt64);
      const torch::Tensor want = path->forward(tokens.view({2, 1}), eager).logits.select(1, 0);
      const torch::Tensor got = graph.step(tokens).clone();
      EXPECT_TRUE(torch::equal(got, want)) << name << " logits after token " << ids[0];
      EXPECT_EQ(replayed.seqlen_offset, eager.seqlen_offset) << name;
      for (size_t l = 0; l < eager.ssm_states.size(); ++l) {
        EXPECT_TRUE(torch::equal(replayed.ssm_states[l], eager.ssm_states[l])) << name << " ssm layer " << l;
        EXPECT_TRUE(torch::equal(replayed.conv_states[l], eager.conv_states[l])) << name << " conv layer " << l;
      }
    }
  }
}

// The replayed CUDA graph computes bit for bit what the eager loop computes: 12 iterations toward
// an unreachable margin (so both run them all), on cuda and on chunked-gpu.
TEST_F(FusedOps, GraphReplayEqualsTheEagerLoopBitForBit) {
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(test_support::model_dir("grouped"));
  for (const char* path : {"cuda", "chunked-gpu"}) {
    OptimizeOptions o;
    o.prompt = {3, 1, 4, 1, 5, 9, 2, 6};
    o.target = {7, 3};
    o.layers = {1, 2};
    o.loss = "margin";
    o.margin = 1e9;
    o.steps = 12;
    o.path = path;
    o.cuda_graph = true;
    const OptimizeResult graphed = optimize_delta(ck, o);
    o.cuda_graph = false;
    const OptimizeResult eager = optimize_delta(ck, o);
    EXPECT_TRUE(graphed.cuda_graph) << path;
    EXPECT_FALSE(eager.cuda_graph) << path;
    EXPECT_EQ(graphed.steps, 12) << path;
    EXPECT_EQ(eager.steps, 12) << path;
    EXPECT_TRUE(graphed.restore_bit_identical) << path;
    for (const auto& [layer, d] : eager.delta) {
      EXPECT_GT(d.abs().max().item<double>(), 0.0) << path;
      EXPECT_TRUE(torch::equal(graphed.delta.at(layer), d)) << path << " layer " << layer;
    }
  }
}

// ---- guard regions: no kernel writes outside its outputs ------------------------------------------

// A device tensor with guard words before and after it, filled with a pattern (kernels/guard_region.h,
// the habit of ggml's test-backend-ops): after a kernel ran, any changed guard word is a write out
// of bounds. Outputs are placed in the middle of the buffer so an overrun in either direction lands
// in a guard.
class Guarded {
 public:
  static constexpr uint32_t kPattern = 0x7fc0dead;  // a NaN payload no kernel computes
  static constexpr int64_t kGuardWords = 1024;      // 4 KB each side: more than one block's stride

  Guarded(torch::IntArrayRef shape, torch::ScalarType dtype) {
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    const int64_t bytes = numel * static_cast<int64_t>(c10::elementSize(dtype));
    payload_words_ = (bytes + 3) / 4;
    words_ = torch::empty({2 * kGuardWords + payload_words_}, torch::TensorOptions().dtype(torch::kInt32).device(torch::kCUDA));
    EXPECT_EQ(kernels::fill_guard(guard_ptr(0), static_cast<size_t>(words_.numel()), kPattern), 0);
    tensor_ = words_.narrow(0, kGuardWords, payload_words_).view(torch::kUInt8).narrow(0, 0, bytes).view(dtype).view(shape);
  }
  torch::Tensor& tensor() { return tensor_; }
  void* ptr() { return tensor_.data_ptr(); }
  float* fptr() { return tensor_.data_ptr<float>(); }
  // Guard words changed before and after the payload.
  std::pair<unsigned long long, unsigned long long> damage() {
    torch::cuda::synchronize();
    unsigned long long before = 0, after = 0;
    EXPECT_EQ(kernels::count_guard_mismatches(guard_ptr(0), kGuardWords, kPattern, &before), 0);
    EXPECT_EQ(kernels::count_guard_mismatches(guard_ptr(kGuardWords + payload_words_), kGuardWords, kPattern, &after), 0);
    return {before, after};
  }
  void expect_intact(const std::string& what) {
    const auto [before, after] = damage();
    EXPECT_EQ(before, 0u) << what << ": words written before the output";
    EXPECT_EQ(after, 0u) << what << ": words written after the output";
  }

 private:
  uint32_t* guard_ptr(int64_t word) { return reinterpret_cast<uint32_t*>(words_.data_ptr<int32_t>()) + word; }
  torch::Tensor words_, tensor_;
  int64_t payload_words_ = 0;
};

// The checker itself: a write one element past the payload, or one before it, is seen.
TEST_F(FusedOps, GuardRegionsSeeAWriteJustOutsideTheOutput) {
  Guarded g({3, 5}, torch::kFloat32);
  g.tensor().fill_(1.0f);
  EXPECT_EQ(g.damage(), std::make_pair(0ull, 0ull));
  torch::from_blob(g.fptr() + 15, {1}, opts_).fill_(2.0f);
  EXPECT_EQ(g.damage(), std::make_pair(0ull, 1ull));
  torch::from_blob(g.fptr() - 1, {1}, opts_).fill_(2.0f);
  EXPECT_EQ(g.damage(), std::make_pair(1ull, 1ull));
}

// Every kernel, forward and backward, at odd sizes (not multiples of a warp or block) and both
// activation dtypes, writes only inside its outputs.
TEST_F(FusedOps, EveryKernelWritesOnlyInsideItsOutputs) {
  namespace k = kernels;
  const int64_t B = 2, T = 5, H = 3, P = 7, G = 1, N = 19, K = 4, D = 37, I = H * P, C = I + 2 * G * N;
  for (const auto act_dtype : {torch::kFloat32, torch::kBFloat16}) {
    SCOPED_TRACE(c10::toString(act_dtype));
    const auto act = act_dtype == torch::kFloat32 ? k::Act::kFloat32 : k::Act::kBFloat16;
    const auto a_opts = opts_.dtype(act_dtype);
    auto rand_act = [&](torch::IntArrayRef shape) { return torch::randn(shape, a_opts).contiguous(); };
    auto rand_f32 = [&](torch::IntArrayRef shape) { return torch::randn(shape, opts_).contiguous(); };

    {  // rms_norm forward and backward
      const torch::Tensor x = rand_act({B * T, D}), w = rand_act({D});
      Guarded out({B * T, D}, act_dtype), rstd({B * T}, torch::kFloat32), gx({B * T, D}, act_dtype);
      ASSERT_EQ(k::rms_norm_forward(act, act, x.data_ptr(), w.data_ptr(), out.ptr(), rstd.fptr(), B * T, D, 1e-5f, nullptr), 0);
      out.expect_intact("rms_norm out");
      rstd.expect_intact("rms_norm rstd");
      const torch::Tensor g = rand_act({B * T, D});
      ASSERT_EQ(k::rms_norm_backward(act, act, x.data_ptr(), w.data_ptr(), rstd.fptr(), g.data_ptr(), gx.ptr(), B * T, D, nullptr), 0);
      gx.expect_intact("rms_norm grad_x");
    }
    {  // gated rms_norm, grouped (groups of 7 channels), gate as a column slice with a wider stride
      const int64_t group = 7, stride = I + 3;
      const torch::Tensor y = rand_f32({B * T, I}), gate = rand_act({B * T, stride}), w = rand_act({I});
      Guarded out({B * T, I}, act_dtype), rstd({B * T, I / group}, torch::kFloat32);
      ASSERT_EQ(k::gated_rms_norm_forward(act, y.data_ptr<float>(), gate.data_ptr(), stride, w.data_ptr(), out.ptr(), rstd.fptr(),
                                          B * T, I, group, 1e-5f, nullptr), 0);
      out.expect_intact("gated_rms_norm out");
      rstd.expect_intact("gated_rms_norm rstd");
      Guarded gy({B * T, I}, torch::kFloat32), ggate({B * T, I}, act_dtype);
      const torch::Tensor g = rand_act({B * T, I});
      ASSERT_EQ(k::gated_rms_norm_backward(act, y.data_ptr<float>(), gate.data_ptr(), stride, w.data_ptr(), rstd.fptr(),
                                           g.data_ptr(), gy.fptr(), ggate.ptr(), B * T, I, group, nullptr), 0);
      gy.expect_intact("gated_rms_norm grad_y");
      ggate.expect_intact("gated_rms_norm grad_gate");
    }
    {  // causal conv1d forward (x a column slice) and backward
      const int64_t stride = C + 5;
      const torch::Tensor x = rand_act({B * T, stride}), window = rand_act({B, C, K}), w = rand_act({C, K}),
                          bias = rand_act({C});
      Guarded out({B, T, C}, act_dtype), new_window({B, C, K}, act_dtype), pre({B, T, C}, torch::kFloat32);
      ASSERT_EQ(k::causal_conv1d_forward(act, x.data_ptr(), stride, window.data_ptr(), w.data_ptr(), bias.data_ptr(), out.ptr(),
                                         new_window.ptr(), pre.fptr(), B, T, C, K, nullptr), 0);
      out.expect_intact("causal_conv1d out");
      new_window.expect_intact("causal_conv1d new_window");
      pre.expect_intact("causal_conv1d pre");
      Guarded gx({B, T, C}, act_dtype);
      const torch::Tensor g = rand_act({B, T, C});
      ASSERT_EQ(k::causal_conv1d_backward(act, g.data_ptr(), pre.fptr(), w.data_ptr(), gx.ptr(), B, T, C, K, nullptr), 0);
      gx.expect_intact("causal_conv1d grad_x");
    }
    {  // dt discretization forward and backward
      const int64_t stride = H + 2;
      const torch::Tensor raw = rand_act({B * T, stride}), bias = rand_f32({H});
      Guarded dt({B, T, H}, torch::kFloat32), graw({B, T, H}, act_dtype);
      ASSERT_EQ(k::discretize_dt_forward(act, raw.data_ptr(), stride, bias.data_ptr<float>(), dt.fptr(), B * T, H, 0.001f, 0.1f,
                                         nullptr), 0);
      dt.expect_intact("discretize_dt dt");
      const torch::Tensor g = rand_f32({B, T, H});
      ASSERT_EQ(k::discretize_dt_backward(act, raw.data_ptr(), stride, bias.data_ptr<float>(), g.data_ptr<float>(), graw.ptr(),
                                          B * T, H, 0.001f, 0.1f, nullptr), 0);
      graw.expect_intact("discretize_dt grad_raw");
    }
    {  // the scan over T tokens and the one-token step backward (x, B, C as slices of one row)
      for (const int64_t tokens : {T, int64_t{1}}) {
        SCOPED_TRACE(tokens);
        const int64_t stride = C + 1;
        const torch::Tensor xbc = rand_act({B * tokens, stride});
        const void* x = xbc.data_ptr();
        const void* Bm = static_cast<const char*>(x) + I * xbc.element_size();
        const void* Cm = static_cast<const char*>(x) + (I + G * N) * xbc.element_size();
        const torch::Tensor dt = torch::rand({B, tokens, H}, opts_) * 0.1, A = -torch::rand({H}, opts_), Dp = rand_f32({H}),
                            initial = rand_f32({B, H, P, N});
        const k::ScanShape s{B, tokens, H, P, G, N};
        Guarded y({B, tokens, H, P}, torch::kFloat32), final_state({B, H, P, N}, torch::kFloat32);
        ASSERT_EQ(k::ssd_chunk_scan_forward(act, s, x, Bm, Cm, stride, dt.data_ptr<float>(), A.data_ptr<float>(), Dp.data_ptr<float>(),
                                      initial.data_ptr<float>(), y.fptr(), final_state.fptr(), nullptr), 0);
        y.expect_intact("ssd_chunk_scan y");
        final_state.expect_intact("ssd_chunk_scan final_state");
        if (tokens != 1) continue;
        const torch::Tensor gy = rand_f32({B, H, P}), gs_out = rand_f32({B, H, P, N});
        Guarded gx({B, H, P}, act_dtype), gdt({B, H}, torch::kFloat32), gB({B, H, N}, torch::kFloat32),
            gC({B, H, N}, torch::kFloat32), gs({B, H, P, N}, torch::kFloat32);
        ASSERT_EQ(k::selective_state_update_backward(act, s, x, Bm, Cm, stride, dt.data_ptr<float>(), A.data_ptr<float>(), Dp.data_ptr<float>(),
                                       initial.data_ptr<float>(), gy.data_ptr<float>(), gs_out.data_ptr<float>(), gx.ptr(),
                                       gdt.fptr(), gB.fptr(), gC.fptr(), gs.fptr(), nullptr), 0);
        gx.expect_intact("selective_state_update_backward grad_x");
        gdt.expect_intact("selective_state_update_backward grad_dt");
        gB.expect_intact("selective_state_update_backward grad_B_head");
        gC.expect_intact("selective_state_update_backward grad_C_head");
        gs.expect_intact("selective_state_update_backward grad_state");
      }
    }
    {  // the fused decode step, forward (new state out of place, the copies for a backward) and backward;
       // N a multiple of 4 (its 16-byte state rows)
      const int64_t Ns = 20, Cs = I + 2 * G * Ns, stride = I + Cs + H + 5;  // an in_proj row: gate, xBC, dt, spare
      const torch::Tensor proj = rand_act({B, stride}), w = rand_act({Cs, K}), bias = rand_act({Cs}), dt_bias = rand_f32({H}),
                          A = -torch::rand({H}, opts_), Dp = rand_f32({H}), state_in = rand_f32({B, H, P, Ns});
      const char* row = static_cast<const char*>(proj.data_ptr());
      Guarded window({B, Cs, K}, act_dtype), y({B, H, P}, torch::kFloat32), state_out({B, H, P, Ns}, torch::kFloat32),
          saved_state({B, H, P, Ns}, torch::kFloat32), saved_pre({B, Cs}, torch::kFloat32);
      window.tensor().copy_(rand_act({B, Cs, K}));
      k::DecodeStepParams f;
      f.act = act;
      f.shape = k::ScanShape{B, 1, H, P, G, Ns};
      f.conv_kernel = K;
      f.xbc_raw = row + I * proj.element_size();
      f.xbc_stride = stride;
      f.dt_raw = row + (I + Cs) * proj.element_size();
      f.dt_stride = stride;
      f.window = window.ptr();
      f.conv_weight = w.data_ptr();
      f.conv_bias = bias.data_ptr();
      f.dt_bias = dt_bias.data_ptr<float>();
      f.dt_min = 0.001f;
      f.dt_max = 0.1f;
      f.A = A.data_ptr<float>();
      f.D = Dp.data_ptr<float>();
      f.state_in = state_in.data_ptr<float>();
      f.state_out = state_out.fptr();
      f.y = y.fptr();
      f.saved_state = saved_state.fptr();
      f.saved_pre = saved_pre.fptr();
      ASSERT_EQ(k::decode_step_forward(f, nullptr), 0);
      window.expect_intact("decode_step window");
      y.expect_intact("decode_step y");
      state_out.expect_intact("decode_step state_out");
      saved_state.expect_intact("decode_step saved_state");
      saved_pre.expect_intact("decode_step saved_pre");
      const torch::Tensor gy = rand_f32({B, H, P}), gs_out = rand_f32({B, H, P, Ns});
      Guarded gxbc({B, Cs}, act_dtype), gdt({B, H}, act_dtype), gs({B, H, P, Ns}, torch::kFloat32),
          workspace({B, H, 2 * Ns}, torch::kFloat32);
      k::DecodeStepBackwardParams bw;
      bw.act = act;
      bw.shape = f.shape;
      bw.conv_kernel = K;
      bw.saved_pre = saved_pre.fptr();
      bw.saved_state = saved_state.fptr();
      bw.dt_raw = f.dt_raw;
      bw.dt_stride = stride;
      bw.conv_weight = w.data_ptr();
      bw.dt_bias = f.dt_bias;
      bw.dt_min = f.dt_min;
      bw.dt_max = f.dt_max;
      bw.A = f.A;
      bw.D = f.D;
      bw.grad_y = gy.data_ptr<float>();
      bw.grad_state_out = gs_out.data_ptr<float>();
      bw.grad_xbc_raw = gxbc.ptr();
      bw.grad_dt_raw = gdt.ptr();
      bw.grad_state = gs.fptr();
      bw.workspace = workspace.fptr();
      ASSERT_EQ(k::decode_step_backward(bw, nullptr), 0);
      gxbc.expect_intact("decode_step_backward grad_xbc_raw");
      gdt.expect_intact("decode_step_backward grad_dt_raw");
      gs.expect_intact("decode_step_backward grad_state");
      workspace.expect_intact("decode_step_backward workspace");
    }
    {  // the decode products with their norms (out_features not a multiple of a block's rows)
      const int64_t cols = 40, rows = 37;  // cols a multiple of 8 (16-byte bf16 rows)
      const torch::Tensor x = rand_f32({B, cols}), nw = rand_act({cols}), w = rand_act({rows, cols}), bias = rand_act({rows});
      Guarded proj({B, rows}, act_dtype);
      k::NormInProjParams ip;
      ip.x_act = k::Act::kFloat32;
      ip.act = act;
      ip.batch = B;
      ip.dim = cols;
      ip.out_features = rows;
      ip.x = x.data_ptr();
      ip.norm_weight = nw.data_ptr();
      ip.weight = w.data_ptr();
      ip.bias = bias.data_ptr();
      ip.out = proj.ptr();
      ASSERT_EQ(k::norm_in_proj_forward(ip, nullptr), 0);
      proj.expect_intact("norm_in_proj out");
      const torch::Tensor y = rand_f32({B, cols}), gate = rand_act({B, cols + 3}), residual = rand_f32({B, rows});
      Guarded out({B, rows}, torch::kFloat32);
      k::GatedNormOutProjParams op;
      op.act = act;
      op.residual_act = k::Act::kFloat32;
      op.batch = B;
      op.channels = cols;
      op.group_size = cols / 2;
      op.out_features = rows;
      op.y = y.data_ptr<float>();
      op.gate = gate.data_ptr();
      op.gate_stride = cols + 3;
      op.norm_weight = nw.data_ptr();
      op.weight = w.data_ptr();
      op.residual = residual.data_ptr();
      op.out = out.ptr();
      ASSERT_EQ(k::gated_norm_out_proj_forward(op, nullptr), 0);
      out.expect_intact("gated_norm_out_proj out");
    }
  }
}

// The fused ops' own checks on a GPU: a tensor on the wrong device or of the wrong dtype is named.
TEST_F(FusedOps, LaunchChecksNameTheTensorOnTheDevice) {
  const torch::Tensor x = randn({1, 2, 4, 16}), bc = randn({1, 2, 1, 16}), dt = randn({1, 2, 4}), h = randn({4});
  try {
    fused::ssd_chunk_scan(x, dt, h, bc, bc.cpu(), h, {});
    ADD_FAILURE() << "no error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'C' must be on a CUDA device"), std::string::npos) << e.what();
  }
  try {
    fused::ssd_chunk_scan(x, dt, h, bc.to(torch::kBFloat16), bc, h, {});
    ADD_FAILURE() << "no error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'B' must be Float"), std::string::npos) << e.what();
  }
}

#else

TEST(FusedOps, BuiltWithoutTheCudaPath) { GTEST_SKIP() << "built without the CUDA kernels"; }

#endif

}  // namespace
}  // namespace mambadiff
