// The real-cache optimizer (SPEC §8): reaches deployed rank 1 with simulated == deployed on the
// embedded models, restores the cache bit-identically on every way out (goal, interrupt,
// exception), and its zero-Δ gate catches an optimizer world that differs from deployment.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <filesystem>

#include "engine/chunked_path.h"
#include "engine/errors.h"
#include "harness/path_registry.h"
#include "optimizer/decode_graph.h"
#include "optimizer/delta_loop.h"
#include "optimizer/real_cache_optimizer.h"
#include "tests/test_support.h"

namespace mambadiff {
namespace {

namespace fs = std::filesystem;

OptimizeOptions options_for(const Mamba2Checkpoint& ck) {
  OptimizeOptions o;
  o.prompt = {3, 1, 4, 1, 5, 9, 2, 6};
  o.target = {7};
  o.layers = {ck.config.num_hidden_layers - 1};
  o.steps = 200;
  return o;
}

struct CacheBytes {
  std::vector<torch::Tensor> ssm, conv;
  std::vector<void*> ptrs;
  int64_t offset;
  explicit CacheBytes(const Mamba2Cache& c) : offset(c.seqlen_offset) {
    for (const auto& t : c.ssm_states) {
      ssm.push_back(t.detach().clone());
      ptrs.push_back(t.data_ptr());
    }
    for (const auto& t : c.conv_states) conv.push_back(t.detach().clone());
  }
  static bool same_bytes(const torch::Tensor& a, const torch::Tensor& b) {
    return torch::equal(a.detach().contiguous().view({-1}).view(torch::kUInt8), b.contiguous().view({-1}).view(torch::kUInt8));
  }
  void expect_equal_to(const Mamba2Cache& c) const {
    EXPECT_EQ(c.seqlen_offset, offset);
    for (size_t l = 0; l < ssm.size(); ++l) {
      EXPECT_TRUE(same_bytes(c.ssm_states[l], ssm[l])) << "ssm_states." << l;
      EXPECT_TRUE(same_bytes(c.conv_states[l], conv[l])) << "conv_states." << l;
      EXPECT_EQ(c.ssm_states[l].data_ptr(), ptrs[l]) << "storage of ssm_states." << l << " changed";
      EXPECT_FALSE(c.ssm_states[l].requires_grad()) << "autograd history left on ssm_states." << l;
    }
  }
};

TEST(RealCacheOptimizer, ReachesDeployedRankOneWithSimulatedEqualDeployed) {
  for (const char* name : {"tiny", "grouped", "limited"}) {
    const Mamba2Checkpoint ck = Mamba2Checkpoint::load(test_support::model_dir(name));
    const OptimizeResult r = optimize_delta(ck, options_for(ck));
    EXPECT_TRUE(r.zero_delta_gate_passed) << name;
    EXPECT_EQ(r.deployed.rank, 1) << name;
    EXPECT_EQ(r.simulated.rank, r.deployed.rank) << name;
    EXPECT_DOUBLE_EQ(r.simulated.probability, r.deployed.probability) << name << ": same path, same numbers";
    EXPECT_TRUE(r.restore_bit_identical) << name;
    EXPECT_EQ(r.deployed_rank_by_path.at("reference"), 1) << name << ": the Δ transfers to the oracle";
  }
}

TEST(RealCacheOptimizer, MultiTokenTargetIsTeacherForcedWithBudgetsAndPgd) {
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(test_support::model_dir("grouped"));
  OptimizeOptions o = options_for(ck);
  o.target = {7, 8};
  o.layers = {0, 2};
  o.loss = "margin";
  o.margin = 0.5;
  o.optimizer = "pgd";
  o.lr = 0.02;
  o.budget_linf = 0.8;
  o.budget_l2 = 6.0;
  const OptimizeResult r = optimize_delta(ck, o);
  EXPECT_EQ(r.deployed.rank, 1);
  EXPECT_GE(r.deployed.margin, 0.5);
  EXPECT_EQ(r.simulated.rank, r.deployed.rank);
  for (const auto& [layer, d] : r.delta) {
    EXPECT_LE(d.abs().max().item<double>(), 0.8 + 1e-6) << "L-inf budget, layer " << layer;
    EXPECT_LE(d.norm().item<double>(), 6.0 + 1e-4) << "L2 budget, layer " << layer;
  }
}

class PrefilledCache : public testing::Test {
 protected:
  void SetUp() override {
    ck = Mamba2Checkpoint::load(test_support::model_dir("tiny"));
    path = std::make_unique<ChunkedPath>(ck, torch::kFloat32, torch::kCPU);
    deploy = std::make_unique<ChunkedPath>(ck, torch::kFloat32, torch::kCPU);
    opt = options_for(ck);
    cache = path->new_cache(1);
    torch::NoGradGuard no_grad;
    path->forward(torch::tensor(std::vector<int64_t>(opt.prompt.begin(), opt.prompt.end() - 1)).view({1, -1}), cache);
  }
  Mamba2Checkpoint ck;
  std::unique_ptr<ChunkedPath> path, deploy;
  OptimizeOptions opt;
  Mamba2Cache cache;
};

TEST_F(PrefilledCache, RestoredBitIdenticallyWhenInterrupted) {
  const CacheBytes before(cache);
  std::atomic<bool> stop{false};
  opt.layers = {1};
  opt.margin = 1e9;  // unreachable: only the interrupt ends the loop
  opt.loss = "margin";
  const OptimizeResult r = optimize_on_cache(ck, *path, cache, *deploy, opt, [&](const StepReport& s) {
    if (s.step == 3) stop.store(true);
  }, &stop);
  EXPECT_TRUE(r.interrupted);
  EXPECT_EQ(r.steps, 4);
  EXPECT_TRUE(r.restore_bit_identical);
  before.expect_equal_to(cache);
}

TEST_F(PrefilledCache, RestoredBitIdenticallyWhenTheLoopThrows) {
  const CacheBytes before(cache);
  opt.layers = {0, 1};
  opt.margin = 1e9;
  EXPECT_THROW(optimize_on_cache(ck, *path, cache, *deploy, opt, [](const StepReport& s) {
    if (s.step == 2) throw std::runtime_error("simulated failure mid-optimization");
  }), std::runtime_error);
  before.expect_equal_to(cache);
}

// The restore guarantee covers the conv window as fully as the SSM state: same bytes are not
// enough, they must be in the same storage (the cache's tensors are what a CUDA graph replays).
TEST_F(PrefilledCache, BitIdentityCheckCoversConvStatesStorage) {
  const Mamba2Cache::Snapshot base = cache.snapshot();
  const CacheStorage storage = storage_of(cache);
  EXPECT_TRUE(restored_bit_identically(cache, base, storage));
  cache.conv_states[0] = cache.conv_states[0].clone();  // same bytes, new storage
  EXPECT_FALSE(restored_bit_identically(cache, base, storage));
  cache.restore(base);
  EXPECT_FALSE(restored_bit_identically(cache, base, storage)) << "restore writes into the tensor it finds";
  cache.conv_states[0] = cache.conv_states[0] + torch::zeros({1}, torch::requires_grad());  // history
  EXPECT_FALSE(restored_bit_identically(cache, base, storage_of(cache)));
}

// The incident's optimizer world: a stand-in cache the model dispatches as prefill (no
// seqlen_offset). Deployment uses the real cache. The zero-Δ gate must refuse to optimize.
class StandInCacheWorld : public ChunkedPath {
 public:
  using ChunkedPath::ChunkedPath;
  std::string name() const override { return "stand-in-cache"; }
  ForwardOutput run(const torch::Tensor& tokens, Mamba2Cache& cache, Branch) override {
    return ChunkedPath::run(tokens, cache, Branch::kPrefill);
  }
};

TEST_F(PrefilledCache, ZeroDeltaGateRefusesAStandInWorld) {
  StandInCacheWorld stand_in(ck, torch::kFloat32, torch::kCPU);
  const CacheBytes before(cache);
  try {
    optimize_on_cache(ck, stand_in, cache, *deploy, opt);
    FAIL() << "the gate let a stand-in world through";
  } catch (const ZeroDeltaGateFailed& e) {
    EXPECT_NE(std::string(e.what()).find("stand-in-cache"), std::string::npos) << e.what();
  }
  before.expect_equal_to(cache);
  // The real world passes the same gate.
  EXPECT_TRUE(optimize_on_cache(ck, *path, cache, *deploy, opt).zero_delta_gate_passed);
}

// A CPU path has no graph: DecodeGraph says so, and refuses to be built rather than half-working
// (deploy_on then decodes eagerly).
TEST(DecodeGraph, UnsupportedOffTheGpuAndRefusedWithoutPrefill) {
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(test_support::model_dir("tiny"));
  ChunkedPath cpu(ck, torch::kFloat32, torch::kCPU);
  EXPECT_FALSE(DecodeGraph::supported(cpu));
  Mamba2Cache cache = cpu.new_cache(1);
  EXPECT_THROW(DecodeGraph(cpu, cache), std::logic_error);
}

TEST(RealCacheOptimizer, DeltaFileRoundTripsWithMetadata) {
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(test_support::model_dir("tiny"));
  const OptimizeOptions o = options_for(ck);
  const OptimizeResult r = optimize_delta(ck, o);
  const fs::path dir = fs::path(MAMBADIFF_TEST_TMP) / "optimizer";
  fs::create_directories(dir);
  save_delta((dir / "d.safetensors").string(), r, o, ck);
  const auto loaded = load_delta((dir / "d.safetensors").string(), ck.config);
  ASSERT_EQ(loaded.size(), r.delta.size());
  for (const auto& [l, d] : r.delta) {
    EXPECT_TRUE(torch::equal(loaded.at(l), d));
    EXPECT_EQ(loaded.at(l).sizes().vec(),
              (std::vector<int64_t>{1, ck.config.num_heads, ck.config.head_dim, ck.config.state_size}));
  }
  EXPECT_EQ(deploy_delta(ck, "chunked", o.prompt, o.target, loaded).rank, r.deployed.rank);
}

TEST(RealCacheOptimizer, BadOptionsAreInputErrors) {
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(test_support::model_dir("tiny"));
  OptimizeOptions o = options_for(ck);
  o.layers = {9};
  EXPECT_THROW(optimize_delta(ck, o), InputError);
  o = options_for(ck);
  o.path = "reference";
  EXPECT_THROW(optimize_delta(ck, o), InputError);
  o = options_for(ck);
  o.prompt = {3};
  EXPECT_THROW(optimize_delta(ck, o), InputError);
  o = options_for(ck);
  o.target = {ck.config.vocab_size};
  EXPECT_THROW(optimize_delta(ck, o), InputError);
}

// The loop's Adam keeps its step counter on the device (so a replayed CUDA graph advances it); it
// must follow torch::optim::Adam's trajectory.
TEST(DeltaLoopAdam, FollowsTorchOptimAdam) {
  torch::manual_seed(7);
  const double lr = 0.05;
  torch::Tensor ours = torch::randn({2, 3, 4, 5});
  const torch::Tensor initial = ours.clone();
  torch::Tensor theirs = ours.clone().requires_grad_(true);
  torch::optim::Adam adam({theirs}, torch::optim::AdamOptions(lr));
  torch::Tensor m = torch::zeros_like(ours), v = torch::zeros_like(ours);
  torch::Tensor step = torch::zeros({}, torch::kFloat32);
  for (int i = 0; i < 25; ++i) {
    // Every other gradient is a strided view (autograd hands such ones back).
    const torch::Tensor g = i % 2 ? torch::randn({2, 3, 5, 4}).transpose(2, 3) * (i % 3 + 1)
                                  : torch::randn_like(ours) * (i % 3 + 1);
    theirs.mutable_grad() = g.clone();
    adam.step();
    step.add_(1);
    adam_update({ours}, {g}, {m}, {v}, step, lr);
  }
  EXPECT_GT((ours - initial).abs().max().item<double>(), 0.1);  // it moved
  EXPECT_TRUE(torch::allclose(ours, theirs.detach(), /*rtol=*/1e-5, /*atol=*/1e-6))
      << (ours - theirs.detach()).abs().max().item<double>();
}

// The margin loss: relu(runner-up - target + margin), summed over target tokens.
TEST(DeltaLoopLoss, MarginAndCrossEntropyByHand) {
  const torch::Tensor a = torch::tensor({1.0f, 4.0f, 2.5f, -1.0f});
  const torch::Tensor b = torch::tensor({0.0f, 0.0f, 3.0f, 1.0f});
  // target 2 in a: runner-up 4.0 -> relu(4.0 - 2.5 + 0.5) = 2.0; target 2 in b: runner-up 1.0 ->
  // relu(1.0 - 3.0 + 0.5) = 0.
  EXPECT_FLOAT_EQ(delta_loss({a, b}, {2, 2}, "margin", 0.5).item<float>(), 2.0f);
  // target 0 (the first entry) and 3 (the last): the competitor slices at both ends.
  EXPECT_FLOAT_EQ(delta_loss({a}, {0}, "margin", 0.0).item<float>(), 3.0f);
  EXPECT_FLOAT_EQ(delta_loss({b}, {3}, "margin", 0.0).item<float>(), 2.0f);
  const double lse = std::log(std::exp(1.0) + std::exp(4.0) + std::exp(2.5) + std::exp(-1.0));
  EXPECT_NEAR(delta_loss({a}, {1}, "ce", 0.0).item<float>(), lse - 4.0, 1e-6);
}

// The statistics of a Δ by hand: ranks with a tie, the worst margin, a non-finite row, ‖Δ‖₂.
TEST(DeltaLoopStatistics, RankMarginAndNormByHand) {
  const torch::Tensor a = torch::tensor({1.0f, 4.0f, 2.5f, -1.0f});
  const torch::Tensor tie = torch::tensor({3.0f, 3.0f, 0.0f, 1.0f});
  const torch::Tensor d1 = torch::tensor({3.0f, 0.0f}), d2 = torch::tensor({{4.0f}});  // ‖(3, 0, 4)‖ = 5
  const torch::Tensor loss = torch::tensor(0.25f);
  // a, target 2: one logit above it (rank 2), margin 2.5 - 4.0; a, target 1: rank 1, margin 1.5.
  torch::Tensor s = delta_statistics({a, a}, {2, 1}, {d1, d2}, loss);
  ASSERT_EQ(s.scalar_type(), torch::kFloat64);
  EXPECT_EQ(s[0].item<double>(), 0.25);
  EXPECT_EQ(s[1].item<double>(), 2.0);
  EXPECT_EQ(s[2].item<double>(), -1.5);
  EXPECT_DOUBLE_EQ(s[3].item<double>(), 5.0);
  // Only strictly greater logits count: target 0 of `tie` is rank 1, and the tie shows as margin 0.
  s = delta_statistics({tie}, {0}, {}, loss);
  EXPECT_EQ(s[1].item<double>(), 1.0);
  EXPECT_EQ(s[2].item<double>(), 0.0);
  EXPECT_EQ(s[3].item<double>(), 0.0);
  // A NaN anywhere in a row ranks its target V + 1 and its margin is NaN.
  const torch::Tensor nan_row = torch::tensor({0.0f, std::nanf(""), 5.0f, 1.0f});
  s = delta_statistics({a, nan_row}, {1, 2}, {}, loss);
  EXPECT_EQ(s[1].item<double>(), 5.0);
  EXPECT_TRUE(std::isnan(s[2].item<double>()));
}

}  // namespace
}  // namespace mambadiff
