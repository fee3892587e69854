// Tests for engine/mamba2_cache (SPEC §3): shapes and dtypes per layer, dispatch, snapshot/restore
// (byte-exact with NaN payloads, same storage, no aliasing), reset, inject, and forwards through the
// chunked and reference paths advancing seqlen_offset and recording the dispatch trace.
#include "engine/mamba2_cache.h"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "engine/checkpoint.h"
#include "engine/chunked_path.h"
#include "engine/errors.h"
#include "oracles/reference_path.h"
#include "tests/test_support.h"

namespace {

namespace fs = std::filesystem;
using mambadiff::Branch;
using mambadiff::Mamba2Cache;
using mambadiff::Mamba2Checkpoint;
using mambadiff::Mamba2Config;
using mambadiff::test_support::input_error;
using mambadiff::test_support::model_dir;
using ::testing::HasSubstr;

const Mamba2Checkpoint& checkpoint(const std::string& name) {
  static std::map<std::string, Mamba2Checkpoint> loaded;
  auto it = loaded.find(name);
  if (it == loaded.end()) {
    it = loaded.emplace(name, Mamba2Checkpoint::load(model_dir(name))).first;
  }
  return it->second;
}

// A small config with G > 1 and distinct dimensions, so a swapped axis shows in a shape.
Mamba2Config small_config() {
  Mamba2Config c;
  c.vocab_size = 50;
  c.hidden_size = 12;
  c.num_hidden_layers = 3;
  c.state_size = 5;
  c.expand = 2;
  c.head_dim = 4;
  c.num_heads = 6;
  c.n_groups = 2;
  c.chunk_size = 4;
  c.conv_kernel = 3;
  c.time_step_max = std::numeric_limits<double>::infinity();
  c.validate("small_config");
  return c;
}

// Raw bytes of a (contiguous, CPU) tensor.
std::vector<uint8_t> bytes_of(const torch::Tensor& t) {
  const torch::Tensor c = t.contiguous().cpu();
  std::vector<uint8_t> b(c.nbytes());
  if (!b.empty()) std::memcpy(b.data(), c.data_ptr(), b.size());
  return b;
}

struct CacheBytes {
  std::vector<std::vector<uint8_t>> conv, ssm;
  int64_t seqlen_offset;
  bool operator==(const CacheBytes& o) const {
    return conv == o.conv && ssm == o.ssm && seqlen_offset == o.seqlen_offset;
  }
};

// For failure messages: sizes, the offset and a digest of each tensor's bytes (gtest would print
// the raw struct).
void PrintTo(const CacheBytes& b, std::ostream* os) {
  auto digest = [](const std::vector<uint8_t>& v) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (uint8_t c : v) h = (h ^ c) * 0x100000001b3ULL;
    return h;
  };
  *os << "{seqlen_offset " << b.seqlen_offset;
  for (size_t l = 0; l < b.ssm.size(); ++l) {
    *os << "; layer " << l << ": ssm " << b.ssm[l].size() << " B #" << std::hex << digest(b.ssm[l]) << std::dec;
    if (l < b.conv.size()) *os << ", conv " << b.conv[l].size() << " B #" << std::hex << digest(b.conv[l]) << std::dec;
  }
  *os << "}";
}

CacheBytes bytes_of(const Mamba2Cache& c) {
  CacheBytes b;
  for (const auto& t : c.conv_states) b.conv.push_back(bytes_of(t));
  for (const auto& t : c.ssm_states) b.ssm.push_back(bytes_of(t));
  b.seqlen_offset = c.seqlen_offset;
  return b;
}

CacheBytes bytes_of(const Mamba2Cache::Snapshot& s) {
  CacheBytes b;
  for (const auto& t : s.conv_states) b.conv.push_back(bytes_of(t));
  for (const auto& t : s.ssm_states) b.ssm.push_back(bytes_of(t));
  b.seqlen_offset = s.seqlen_offset;
  return b;
}

std::vector<const void*> pointers(const Mamba2Cache& c) {
  std::vector<const void*> p;
  for (const auto& t : c.conv_states) p.push_back(t.data_ptr());
  for (const auto& t : c.ssm_states) p.push_back(t.data_ptr());
  return p;
}

// Fills every state with random values and plants NaNs with payloads (quiet and signalling, both
// signs) through an int32 view, so a copy through float arithmetic would show.
void fill_with_payloads(Mamba2Cache& c, uint64_t seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  for (auto* states : {&c.conv_states, &c.ssm_states}) {
    for (auto& t : *states) {
      t.copy_(torch::randn(t.sizes(), torch::kFloat64).to(t.scalar_type()));
      if (t.scalar_type() != torch::kFloat32) continue;
      auto bits = t.view({-1}).view(torch::kInt32);
      const int32_t payloads[] = {0x7fc00123, static_cast<int32_t>(0xffc0beefu), 0x7f800001,
                                  static_cast<int32_t>(0xff812345u)};
      for (int i = 0; i < 4 && i < bits.numel(); ++i) bits[i * 7 % bits.numel()] = payloads[i];
    }
  }
  c.seqlen_offset = 17;
}

// ---- construction ----------------------------------------------------------------------------

TEST(Mamba2Cache, ShapesAndDtypesPerLayer) {
  const Mamba2Config c = small_config();
  ASSERT_EQ(c.conv_dim(), 24 + 2 * 2 * 5);
  for (const auto& [conv_dtype, state_dtype] :
       std::vector<std::pair<torch::ScalarType, torch::ScalarType>>{{torch::kFloat32, torch::kFloat32},
                                                                   {torch::kBFloat16, torch::kFloat32},
                                                                   {torch::kFloat64, torch::kFloat64}}) {
    Mamba2Cache cache(c, 3, conv_dtype, state_dtype, torch::kCPU);
    EXPECT_EQ(cache.num_layers(), 3);
    EXPECT_EQ(cache.batch_size(), 3);
    EXPECT_EQ(cache.conv_dtype(), conv_dtype);
    EXPECT_EQ(cache.state_dtype(), state_dtype);
    EXPECT_EQ(cache.device(), torch::Device(torch::kCPU));
    EXPECT_EQ(cache.seqlen_offset, 0);
    ASSERT_EQ(cache.conv_states.size(), 3u);
    ASSERT_EQ(cache.ssm_states.size(), 3u);
    for (int64_t l = 0; l < 3; ++l) {
      const auto& conv = cache.conv_states[l];
      const auto& ssm = cache.ssm_states[l];
      EXPECT_EQ(conv.sizes().vec(), (std::vector<int64_t>{3, c.conv_dim(), 3})) << l;  // [B, conv_dim, K]
      EXPECT_EQ(ssm.sizes().vec(), (std::vector<int64_t>{3, 6, 4, 5})) << l;          // [B, H, P, N]
      EXPECT_EQ(conv.scalar_type(), conv_dtype);
      EXPECT_EQ(ssm.scalar_type(), state_dtype);
      EXPECT_TRUE(conv.is_contiguous() && ssm.is_contiguous());
      EXPECT_EQ(conv.count_nonzero().item<int64_t>(), 0);
      EXPECT_EQ(ssm.count_nonzero().item<int64_t>(), 0);
    }
    // Layers own distinct storage.
    EXPECT_NE(cache.ssm_states[0].data_ptr(), cache.ssm_states[1].data_ptr());
    EXPECT_NE(cache.conv_states[0].data_ptr(), cache.conv_states[1].data_ptr());
  }
}

TEST(Mamba2Cache, PathCachesMatchTheirModels) {
  for (const std::string name : {"tiny", "grouped", "limited"}) {
    SCOPED_TRACE(name);
    const auto& ck = checkpoint(name);
    const auto& c = ck.config;
    mambadiff::ChunkedPath chunked(ck, torch::kBFloat16, torch::kCPU);
    const Mamba2Cache a = chunked.new_cache(2);
    EXPECT_EQ(a.conv_dtype(), torch::kBFloat16);
    EXPECT_EQ(a.state_dtype(), torch::kFloat32);  // fp32 SSM state whatever the activations
    mambadiff::ReferencePath reference(ck);
    const Mamba2Cache r = reference.new_cache(2);
    EXPECT_EQ(r.state_dtype(), torch::kFloat64);
    for (const Mamba2Cache* cache : {&a, &r}) {
      ASSERT_EQ(cache->num_layers(), c.num_hidden_layers);
      for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
        EXPECT_EQ(cache->conv_states[l].sizes().vec(), (std::vector<int64_t>{2, c.conv_dim(), c.conv_kernel}));
        EXPECT_EQ(cache->ssm_states[l].sizes().vec(),
                  (std::vector<int64_t>{2, c.num_heads, c.head_dim, c.state_size}));
      }
    }
  }
}

// ---- dispatch --------------------------------------------------------------------------------

TEST(Mamba2Cache, DispatchBySeqlenOffsetAndTokens) {
  Mamba2Cache cache(small_config(), 1, torch::kFloat32, torch::kFloat32, torch::kCPU);
  EXPECT_EQ(cache.dispatch(1), Branch::kPrefill);
  EXPECT_EQ(cache.dispatch(7), Branch::kPrefill);
  cache.seqlen_offset = 1;
  EXPECT_EQ(cache.dispatch(1), Branch::kStep);
  EXPECT_EQ(cache.dispatch(2), Branch::kContinue);
  cache.seqlen_offset = 1000;
  EXPECT_EQ(cache.dispatch(1), Branch::kStep);
  EXPECT_EQ(cache.dispatch(300), Branch::kContinue);
  // The incident: non-zero states but seqlen_offset 0 still means prefill. Dispatch reads the
  // offset, never the state's contents.
  cache.ssm_states[0].fill_(1.0);
  cache.seqlen_offset = 0;
  EXPECT_EQ(cache.dispatch(1), Branch::kPrefill);

  EXPECT_STREQ(mambadiff::branch_name(Branch::kPrefill), "prefill");
  EXPECT_STREQ(mambadiff::branch_name(Branch::kStep), "step");
  EXPECT_STREQ(mambadiff::branch_name(Branch::kContinue), "continue");
  EXPECT_STREQ(mambadiff::logical_kernels(Branch::kPrefill), mambadiff::logical_kernels(Branch::kContinue));
  EXPECT_STRNE(mambadiff::logical_kernels(Branch::kPrefill), mambadiff::logical_kernels(Branch::kStep));
}

// ---- snapshot / restore / reset --------------------------------------------------------------

TEST(Mamba2Cache, SnapshotRestoreIsByteExactWithNanPayloadsInTheSameStorage) {
  for (const auto conv_dtype : {torch::kFloat32, torch::kBFloat16}) {
    SCOPED_TRACE(c10::toString(conv_dtype));
    Mamba2Cache cache(small_config(), 2, conv_dtype, torch::kFloat32, torch::kCPU);
    fill_with_payloads(cache, 1);
    const CacheBytes before = bytes_of(cache);
    const auto ptrs = pointers(cache);
    // The planted payloads are there (a sanity check of the fixture itself).
    EXPECT_EQ(cache.ssm_states[0].view({-1}).view(torch::kInt32)[0].item<int32_t>(), 0x7fc00123);
    EXPECT_TRUE(torch::isnan(cache.ssm_states[1]).any().item<bool>());

    const Mamba2Cache::Snapshot snap = cache.snapshot();
    EXPECT_EQ(bytes_of(snap), before) << "the snapshot must hold every byte";

    // Everything changes: values, NaNs replaced, the offset.
    {
      torch::NoGradGuard no_grad;
      for (auto& t : cache.ssm_states) t.fill_(3.5);
      for (auto& t : cache.conv_states) t.uniform_();
    }
    cache.inject(1, torch::ones({6, 4, 5}));
    cache.seqlen_offset = 99;
    ASSERT_FALSE(bytes_of(cache) == before);

    cache.restore(snap);
    EXPECT_EQ(bytes_of(cache), before) << "restore must bring back every byte, NaN payloads included";
    EXPECT_EQ(cache.seqlen_offset, 17);
    EXPECT_EQ(pointers(cache), ptrs) << "restore must write into the same storage";
    EXPECT_EQ(cache.ssm_states[0].view({-1}).view(torch::kInt32)[0].item<int32_t>(), 0x7fc00123);

    // Restoring twice, and after a reset, is the same.
    cache.reset();
    cache.restore(snap);
    cache.restore(snap);
    EXPECT_EQ(bytes_of(cache), before);
    EXPECT_EQ(pointers(cache), ptrs);
  }
}

TEST(Mamba2Cache, SnapshotDoesNotAliasTheCache) {
  Mamba2Cache cache(small_config(), 2, torch::kFloat32, torch::kFloat32, torch::kCPU);
  fill_with_payloads(cache, 2);
  const CacheBytes before = bytes_of(cache);
  const Mamba2Cache::Snapshot snap = cache.snapshot();
  for (size_t l = 0; l < snap.ssm_states.size(); ++l) {
    EXPECT_NE(snap.ssm_states[l].data_ptr(), cache.ssm_states[l].data_ptr()) << l;
    EXPECT_NE(snap.conv_states[l].data_ptr(), cache.conv_states[l].data_ptr()) << l;
  }
  // In-place mutation of the cache (what forward and inject do) must not reach the snapshot.
  {
    torch::NoGradGuard no_grad;
    for (auto& t : cache.ssm_states) t.add_(1.0);
    for (auto& t : cache.conv_states) t.mul_(-2.0);
  }
  cache.inject(0, torch::full({2, 6, 4, 5}, 0.25));
  cache.seqlen_offset = 3;
  EXPECT_EQ(bytes_of(snap), before);
  cache.reset();
  EXPECT_EQ(bytes_of(snap), before);
  cache.restore(snap);
  EXPECT_EQ(bytes_of(cache), before);
  // And mutating the cache after a restore still leaves the snapshot alone.
  cache.ssm_states[2].fill_(7.0);
  EXPECT_EQ(bytes_of(snap), before);
}

TEST(Mamba2Cache, RestoreRejectsASnapshotOfAnotherShapeOfCache) {
  Mamba2Config two = small_config();
  two.num_hidden_layers = 2;
  Mamba2Cache a(small_config(), 1, torch::kFloat32, torch::kFloat32, torch::kCPU);
  Mamba2Cache b(two, 1, torch::kFloat32, torch::kFloat32, torch::kCPU);
  const auto snap = b.snapshot();
  EXPECT_THAT(input_error([&] { a.restore(snap); }), HasSubstr("restore"));
}

TEST(Mamba2Cache, ResetZerosAndKeepsStorage) {
  Mamba2Cache cache(small_config(), 2, torch::kFloat32, torch::kFloat32, torch::kCPU);
  fill_with_payloads(cache, 3);
  const auto ptrs = pointers(cache);
  cache.reset();
  EXPECT_EQ(cache.seqlen_offset, 0);
  EXPECT_EQ(pointers(cache), ptrs);
  for (int64_t l = 0; l < cache.num_layers(); ++l) {
    // Every byte zero (not merely == 0.0: NaNs compare unequal and -0.0 equal).
    for (const auto& b : bytes_of(cache.ssm_states[l])) ASSERT_EQ(b, 0) << l;
    for (const auto& b : bytes_of(cache.conv_states[l])) ASSERT_EQ(b, 0) << l;
  }
  EXPECT_EQ(cache.dispatch(1), Branch::kPrefill);
}

TEST(Mamba2Cache, CopyBytesIsBitExactAndChecksShapes) {
  torch::Tensor src = torch::randn({3, 4});
  src.view({-1}).view(torch::kInt32)[5] = static_cast<int32_t>(0xff800abcu);
  torch::Tensor dst = torch::zeros({3, 4});
  const void* p = dst.data_ptr();
  mambadiff::copy_bytes(dst, src);
  EXPECT_EQ(bytes_of(dst), bytes_of(src));
  EXPECT_EQ(dst.data_ptr(), p);
  torch::Tensor wrong = torch::zeros({4, 3});
  EXPECT_ANY_THROW(mambadiff::copy_bytes(wrong, src));
  torch::Tensor wrong_dtype = torch::zeros({3, 4}, torch::kFloat64);
  EXPECT_ANY_THROW(mambadiff::copy_bytes(wrong_dtype, src));
}

TEST(Mamba2Cache, CopyBytesMismatchIsAnInputErrorNamingTheTensorAndBothShapes) {
  torch::Tensor src = torch::zeros({3, 4});
  torch::Tensor wrong = torch::zeros({4, 3}, torch::kFloat64);
  const std::string msg = input_error([&] { mambadiff::copy_bytes(wrong, src, "ssm_states[2]"); });
  EXPECT_THAT(msg, HasSubstr("'ssm_states[2]'"));
  EXPECT_THAT(msg, HasSubstr("[4, 3] Double"));
  EXPECT_THAT(msg, HasSubstr("[3, 4] Float"));
  // The multi-tensor form names the pair at fault and copies nothing when any pair is wrong.
  torch::Tensor ok_dst = torch::zeros({2}), ok_src = torch::ones({2});
  const std::string multi = input_error(
      [&] { mambadiff::copy_bytes({ok_dst, wrong}, {ok_src, src}, {"conv_states[0]", "conv_states[1]"}); });
  EXPECT_THAT(multi, HasSubstr("'conv_states[1]'"));
  EXPECT_EQ(ok_dst.sum().item<float>(), 0.0f);
}

// A restore from a mismatched snapshot must throw before it touches anything: every state's bytes,
// storage, dtype, autograd flag and seqlen_offset as they were.
TEST(Mamba2Cache, MismatchedRestoreLeavesTheCacheUnchanged) {
  Mamba2Cache cache(small_config(), 2, torch::kFloat32, torch::kFloat32, torch::kCPU);
  torch::manual_seed(7);
  for (auto& t : cache.conv_states) t.normal_();
  for (auto& t : cache.ssm_states) t.normal_();
  cache.seqlen_offset = 5;
  Mamba2Cache::Snapshot bad = cache.snapshot();
  for (auto& t : bad.conv_states) t.fill_(1.0f);
  for (auto& t : bad.ssm_states) t.fill_(1.0f);
  bad.seqlen_offset = 9;
  // The last layer's ssm state has the wrong shape: found only after every other pair was checked.
  bad.ssm_states.back() = torch::zeros({1, 1, 1, 1});
  // A state with autograd history (as the optimizer leaves it): restore must not detach it first.
  torch::Tensor leaf = torch::zeros(cache.ssm_states[0].sizes(), torch::requires_grad());
  cache.ssm_states[0] = cache.ssm_states[0] + leaf;
  const Mamba2Cache::Snapshot before = cache.snapshot();
  const auto ptrs = pointers(cache);

  const std::string msg = input_error([&] { cache.restore(bad); });
  EXPECT_THAT(msg, HasSubstr(fmt::format("ssm_states[{}]", cache.num_layers() - 1)));
  EXPECT_EQ(cache.seqlen_offset, 5);
  EXPECT_EQ(pointers(cache), ptrs);
  EXPECT_TRUE(cache.ssm_states[0].requires_grad());
  for (int64_t l = 0; l < cache.num_layers(); ++l) {
    EXPECT_EQ(bytes_of(cache.conv_states[l]), bytes_of(before.conv_states[l])) << l;
    EXPECT_EQ(bytes_of(cache.ssm_states[l]), bytes_of(before.ssm_states[l])) << l;
    EXPECT_EQ(cache.conv_states[l].scalar_type(), torch::kFloat32);
    EXPECT_EQ(cache.ssm_states[l].sizes(), before.ssm_states[l].sizes());
  }
}

// The guard's destructor runs a restore that can throw; it must log, not terminate the process.
TEST(Mamba2Cache, RestoreGuardNeverThrowsFromItsDestructor) {
  Mamba2Cache cache(small_config(), 1, torch::kFloat32, torch::kFloat32, torch::kCPU);
  Mamba2Cache::Snapshot bad = cache.snapshot();
  bad.conv_states.front() = torch::zeros({2});
  testing::internal::CaptureStderr();
  {
    mambadiff::ScopedCacheRestore guard(cache, bad);
  }  // before the fix: std::terminate here
  EXPECT_THAT(testing::internal::GetCapturedStderr(), HasSubstr("conv_states[0]"));
  // The explicit restore on the normal path throws the InputError, and the destructor stays quiet.
  testing::internal::CaptureStderr();
  {
    mambadiff::ScopedCacheRestore guard(cache, bad);
    EXPECT_THAT(input_error([&] { guard.restore_now(); }), HasSubstr("conv_states[0]"));
  }
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
  // And a good snapshot is restored by the destructor on an early exit.
  const Mamba2Cache::Snapshot zeros = cache.snapshot();
  {
    mambadiff::ScopedCacheRestore guard(cache, zeros);
    cache.ssm_states[0].fill_(3.0f);
    cache.seqlen_offset = 4;
  }
  EXPECT_EQ(cache.seqlen_offset, 0);
  EXPECT_EQ(bytes_of(cache.ssm_states[0]), bytes_of(zeros.ssm_states[0]));
}

// ---- inject ----------------------------------------------------------------------------------

TEST(Mamba2Cache, InjectFullShapeAddsToOneLayer) {
  Mamba2Cache cache(small_config(), 2, torch::kFloat32, torch::kFloat32, torch::kCPU);
  torch::manual_seed(4);
  for (auto& t : cache.ssm_states) t.copy_(torch::randn(t.sizes()));
  const auto before = pointers(cache);
  const torch::Tensor s0 = cache.ssm_states[0].clone(), s1 = cache.ssm_states[1].clone(),
                      s2 = cache.ssm_states[2].clone();
  const torch::Tensor delta = torch::randn({2, 6, 4, 5});
  cache.inject(1, delta);
  EXPECT_TRUE(torch::equal(cache.ssm_states[1], s1 + delta));
  EXPECT_TRUE(torch::equal(cache.ssm_states[0], s0));
  EXPECT_TRUE(torch::equal(cache.ssm_states[2], s2));
  EXPECT_EQ(pointers(cache), before) << "inject works in place";
  EXPECT_EQ(cache.seqlen_offset, 0) << "inject does not consume tokens";
}

TEST(Mamba2Cache, InjectBroadcastShapeAddsToEveryRow) {
  Mamba2Cache cache(small_config(), 3, torch::kFloat32, torch::kFloat32, torch::kCPU);
  torch::manual_seed(5);
  for (auto& t : cache.ssm_states) t.copy_(torch::randn(t.sizes()));
  const torch::Tensor s2 = cache.ssm_states[2].clone();
  const torch::Tensor delta = torch::randn({6, 4, 5}, torch::kFloat64);  // converted to the state's dtype
  cache.inject(2, delta);
  for (int64_t b = 0; b < 3; ++b) {
    EXPECT_TRUE(torch::equal(cache.ssm_states[2][b], s2[b] + delta.to(torch::kFloat32))) << b;
  }
}

TEST(Mamba2Cache, InjectErrorsNameTheLayerAndShape) {
  Mamba2Cache cache(small_config(), 2, torch::kFloat32, torch::kFloat32, torch::kCPU);
  const CacheBytes before = bytes_of(cache);

  std::string m = input_error([&] { cache.inject(3, torch::zeros({6, 4, 5})); });
  EXPECT_THAT(m, HasSubstr("layer 3"));
  EXPECT_THAT(m, HasSubstr("out of range"));
  m = input_error([&] { cache.inject(-1, torch::zeros({6, 4, 5})); });
  EXPECT_THAT(m, HasSubstr("layer -1"));

  m = input_error([&] { cache.inject(1, torch::zeros({2, 6, 5, 4})); });  // P and N swapped
  EXPECT_THAT(m, HasSubstr("layer 1"));
  EXPECT_THAT(m, HasSubstr("2, 6, 5, 4"));  // what was given
  EXPECT_THAT(m, HasSubstr("2, 6, 4, 5"));  // what was expected
  m = input_error([&] { cache.inject(0, torch::zeros({3, 6, 4, 5})); });  // wrong batch
  EXPECT_THAT(m, HasSubstr("layer 0"));
  EXPECT_THAT(m, HasSubstr("3, 6, 4, 5"));
  m = input_error([&] { cache.inject(0, torch::zeros({4, 5})); });  // too few dims
  EXPECT_THAT(m, HasSubstr("4, 5"));
  m = input_error([&] { cache.inject(2, torch::zeros({1, 2, 6, 4, 5})); });  // too many dims
  EXPECT_THAT(m, HasSubstr("layer 2"));

  EXPECT_EQ(bytes_of(cache), before) << "a rejected inject changes nothing";
}

// ---- forwards through the paths ---------------------------------------------------------------

struct PathCase {
  std::string model;
  std::string path;  // "chunked" | "chunked-bf16" | "reference"
};

std::unique_ptr<mambadiff::ExecutionPath> make(const PathCase& pc) {
  const auto& ck = checkpoint(pc.model);
  if (pc.path == "reference") return std::make_unique<mambadiff::ReferencePath>(ck);
  if (pc.path == "chunked-bf16") return std::make_unique<mambadiff::ChunkedPath>(ck, torch::kBFloat16, torch::kCPU);
  return std::make_unique<mambadiff::ChunkedPath>(ck, torch::kFloat32, torch::kCPU);
}

class ForwardThroughPath : public ::testing::TestWithParam<PathCase> {};

TEST_P(ForwardThroughPath, AdvancesSeqlenOffsetAndRecordsTheTrace) {
  auto path = make(GetParam());
  const auto& c = path->config();
  const int64_t B = 2;
  Mamba2Cache cache = path->new_cache(B);
  const auto ptrs = pointers(cache);
  torch::manual_seed(6);
  // T=11 crosses a chunk boundary in every embedded model (chunk sizes 8 and 16 are both hit by
  // the later continue of 9 tokens).
  const std::vector<std::pair<int64_t, Branch>> plan = {
      {11, Branch::kPrefill}, {1, Branch::kStep}, {1, Branch::kStep}, {9, Branch::kContinue}, {1, Branch::kStep}};
  int64_t offset = 0;
  for (size_t i = 0; i < plan.size(); ++i) {
    const auto [T, branch] = plan[i];
    SCOPED_TRACE(testing::Message() << "forward " << i << " T=" << T);
    EXPECT_EQ(cache.dispatch(T), branch);
    const torch::Tensor tokens = torch::randint(0, c.vocab_size, {B, T}, torch::kInt64);
    const CacheBytes before = bytes_of(cache);
    const auto out = path->forward(tokens, cache);
    offset += T;
    EXPECT_EQ(cache.seqlen_offset, offset);
    EXPECT_EQ(out.logits.sizes().vec(), (std::vector<int64_t>{B, T, c.vocab_size}));
    EXPECT_TRUE(torch::isfinite(out.logits).all().item<bool>());
    ASSERT_EQ(out.layer_outputs.size(), static_cast<size_t>(c.num_hidden_layers));
    ASSERT_EQ(out.trace.size(), static_cast<size_t>(c.num_hidden_layers)) << "one record per layer";
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      EXPECT_EQ(out.trace[l].layer, l);
      EXPECT_EQ(out.trace[l].branch, branch) << mambadiff::branch_name(out.trace[l].branch);
      EXPECT_EQ(out.trace[l].kernels, mambadiff::logical_kernels(branch));
    }
    EXPECT_FALSE(bytes_of(cache) == before) << "a forward updates the states";
    EXPECT_EQ(pointers(cache), ptrs) << "a forward writes the cache in place";
  }
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    EXPECT_TRUE(torch::isfinite(cache.ssm_states[l]).all().item<bool>());
    EXPECT_GT(cache.ssm_states[l].abs().sum().item<double>(), 0.0);
  }

  // After reset the next forward is a prefill again, and the offset restarts.
  cache.reset();
  const auto out = path->forward(torch::zeros({B, 3}, torch::kInt64), cache);
  EXPECT_EQ(cache.seqlen_offset, 3);
  EXPECT_EQ(out.trace.at(0).branch, Branch::kPrefill);
}

TEST_P(ForwardThroughPath, RejectedForwardLeavesTheCacheAlone) {
  auto path = make(GetParam());
  const auto& c = path->config();
  Mamba2Cache cache = path->new_cache(2);
  path->forward(torch::ones({2, 4}, torch::kInt64), cache);
  const CacheBytes before = bytes_of(cache);

  std::string m = input_error([&] { path->forward(torch::full({2, 1}, c.vocab_size, torch::kInt64), cache); });
  EXPECT_THAT(m, HasSubstr("vocab_size"));
  EXPECT_THAT(m, HasSubstr(std::to_string(c.vocab_size)));
  m = input_error([&] { path->forward(torch::full({2, 1}, -3, torch::kInt64), cache); });
  EXPECT_THAT(m, HasSubstr("-3"));
  m = input_error([&] { path->forward(torch::ones({3, 1}, torch::kInt64), cache); });
  EXPECT_THAT(m, HasSubstr("batch size 3"));
  m = input_error([&] { path->forward(torch::ones({2, 0}, torch::kInt64), cache); });
  EXPECT_THAT(m, HasSubstr("tokens"));
  m = input_error([&] { path->forward(torch::ones({4}, torch::kInt64), cache); });
  EXPECT_THAT(m, HasSubstr("tokens"));
  EXPECT_EQ(bytes_of(cache), before) << "a rejected forward changes neither states nor seqlen_offset";
}

TEST_P(ForwardThroughPath, SnapshotRestoreReplaysBitIdentically) {
  auto path = make(GetParam());
  const auto& c = path->config();
  Mamba2Cache cache = path->new_cache(2);
  torch::manual_seed(7);
  path->forward(torch::randint(0, c.vocab_size, {2, 6}, torch::kInt64), cache);
  const auto snap = cache.snapshot();
  const torch::Tensor next = torch::randint(0, c.vocab_size, {2, 1}, torch::kInt64);
  const auto first = path->forward(next, cache);
  const CacheBytes after_first = bytes_of(cache);
  path->forward(torch::randint(0, c.vocab_size, {2, 5}, torch::kInt64), cache);  // wander off
  cache.restore(snap);
  EXPECT_EQ(cache.seqlen_offset, 6);
  const auto second = path->forward(next, cache);
  EXPECT_EQ(second.trace, first.trace);
  EXPECT_EQ(bytes_of(second.logits), bytes_of(first.logits)) << "same cache bytes, same op: same logits bits";
  EXPECT_EQ(bytes_of(cache), after_first);
}

INSTANTIATE_TEST_SUITE_P(Paths, ForwardThroughPath,
                         ::testing::Values(PathCase{"tiny", "chunked"}, PathCase{"tiny", "reference"},
                                           PathCase{"grouped", "chunked"}, PathCase{"grouped", "reference"},
                                           PathCase{"limited", "chunked-bf16"}, PathCase{"limited", "reference"}),
                         [](const auto& info) {
                           std::string n = info.param.model + "_" + info.param.path;
                           for (auto& ch : n)
                             if (ch == '-') ch = '_';
                           return n;
                         });

TEST(Mamba2Cache, ChunkedAndReferenceRecordTheSameTrace) {
  for (const std::string model : {"tiny", "grouped", "limited"}) {
    SCOPED_TRACE(model);
    auto a = make({model, "chunked"});
    auto b = make({model, "reference"});
    Mamba2Cache ca = a->new_cache(1), cb = b->new_cache(1);
    for (const int64_t T : {5, 1, 3, 1}) {
      const torch::Tensor tokens = torch::arange(T, torch::kInt64).view({1, T});
      const auto oa = a->forward(tokens, ca);
      const auto ob = b->forward(tokens, cb);
      EXPECT_EQ(oa.trace, ob.trace) << "T=" << T;
      EXPECT_EQ(ca.seqlen_offset, cb.seqlen_offset);
      // Loose sanity only (the tolerance machinery is compare.h's job): same model, same tokens.
      EXPECT_LT((oa.logits.to(torch::kFloat64) - ob.logits).abs().max().item<double>(), 1e-2);
    }
  }
}

}  // namespace
