// The `cuda` path's fused kernels against the ATen ops of the chunked path (forward values and
// gradients), the whole path's optimizer gradient against chunked-gpu's, and the optimizer on the
// cuda path with its iteration replayed from a CUDA graph against the same loop run eagerly.
// Needs a CUDA device: without one every test here is reported SKIPPED (never passed).
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <filesystem>

#include "engine/aten_ops.h"
#include "engine/chunked_path.h"
#include "harness/path_registry.h"
#include "optimizer/real_cache_optimizer.h"
#if MAMBADIFF_CUDA_PATH
#include "cuda_path/cuda_path.h"
#include "cuda_path/fused_ops.h"
#endif

namespace mambadiff {
namespace {

namespace fs = std::filesystem;
const fs::path kModels = fs::path(MAMBADIFF_SOURCE_DIR) / "corpus" / "models";

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

TEST_F(FusedOps, DecodeStepForwardAndBackwardMatchTheStateUpdate) {
  for (const ScanCase c : {ScanCase{2, 1, 4, 8, 2, 16}, ScanCase{1, 1, 24, 64, 1, 128}, ScanCase{3, 1, 8, 16, 4, 40}}) {
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

// The whole path: d loss / d Δ through the cuda path equals chunked-gpu's (fp32, within the
// error of two fp32 summation orders).
TEST_F(FusedOps, OptimizerGradientMatchesChunkedGpu) {
  for (const char* model : {"tiny", "grouped", "bytes"}) {
    const Mamba2Checkpoint ck = Mamba2Checkpoint::load(kModels / model);
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
  auto [y, s1] = fused::ssd_chunk_scan(x, dt, A, Bm, Cm, D, initial);
  auto [ry, rs1] = aten_ops::ssd_chunk_scan(x, dt, A, Bm, Cm, D, initial, 4);
  EXPECT_LT(rel_err(y, ry), 1e-4);  // fp32 math on the same bf16 inputs
  EXPECT_LT(rel_err(s1, rs1), 1e-4);
  // norms: bf16 weights; the fp32 residual into bf16 weights; the gated norm's bf16 gate.
  const torch::Tensor h = bf16(randn({2, 5, 96})), nw = bf16(randn({96}));
  EXPECT_LT(rel_err(fused::rms_norm(h, nw, 1e-5), aten_ops::rms_norm(h, nw, 1e-5)), kBf16Tol);
  const torch::Tensor yy = randn({2, 5, 64}), gate = proj.narrow(2, 0, 64), gw = bf16(randn({64}));
  EXPECT_LT(rel_err(fused::gated_rms_norm(yy, gate, gw, 1e-5, 64), aten_ops::gated_rms_norm(yy, gate, gw, 1e-5, 64)),
            kBf16Tol);
}

// The optimizer on the cuda path: deployed rank 1 with simulated == deployed, the cache restored.
TEST_F(FusedOps, OptimizerOnCudaPathReachesDeployedRankOne) {
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(kModels / "tiny");
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

// The replayed CUDA graph computes bit for bit what the eager loop computes: 12 iterations toward
// an unreachable margin (so both run them all), on cuda and on chunked-gpu.
TEST_F(FusedOps, GraphReplayEqualsTheEagerLoopBitForBit) {
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(kModels / "grouped");
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

#else

TEST(FusedOps, BuiltWithoutTheCudaPath) { GTEST_SKIP() << "built without the CUDA kernels"; }

#endif

}  // namespace
}  // namespace mambadiff
