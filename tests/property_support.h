// Shared support for the RapidCheck property tests (tests/*_property_test.cpp):
//   * the case count (at least kMinCases per property; RC_PARAMS still wins, see below);
//   * ModelSpec, a random Mamba2 model built in memory (no files) from a generated description
//     that mixes scaled-down real shapes with edge cases, and its rc::Arbitrary generator;
//   * byte-level cache images, relative errors, planted NaN payloads, random tokens and deltas.
// Every random tensor is drawn from a torch::Generator seeded by a value RapidCheck generated, so
// the RC_PARAMS="reproduce=..." line a failure prints replays the case exactly.
#pragma once

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <ostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "engine/checkpoint.h"
#include "engine/chunked_path.h"
#include "engine/config.h"
#include "engine/execution_path.h"
#include "engine/mamba2_cache.h"
#include "harness/compare.h"
#include "harness/scenario.h"
#include "oracles/reference_path.h"
#include "tests/random_model.h"

// Fails the case unless `cond` holds, with `msg` (streamed) saying what was expected and found.
#define PROP_ASSERT(cond, msg)                                                         \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      std::ostringstream prop_msg_;                                                    \
      prop_msg_ << msg;                                                                \
      RC_FAIL(std::string("expected (" #cond ")\n") + prop_msg_.str());                \
    }                                                                                  \
  } while (false)

namespace mambadiff::props {

// ---------------------------------------------------------------------------------------------
// Case count. RapidCheck's default is 100 successful cases; the project asks for at least 200.
// RapidCheck reads RC_PARAMS once, lazily, on the first property checked (static Configuration in
// rc::detail::configuration()), so setting it while the test binary's globals are initialised,
// before gtest_main runs any test, is early enough. A user's RC_PARAMS is kept as given: only when
// it names no max_success is "max_success=200" appended (so "reproduce=..." and "seed=..." work
// unchanged, and an explicit max_success wins).
inline constexpr int kMinCases = 200;

inline bool default_case_count() {
  const char* env = std::getenv("RC_PARAMS");
  std::string params = env ? env : "";
  if (params.find("max_success") == std::string::npos) {
    params += (params.empty() ? "" : " ") + std::string("max_success=") + std::to_string(kMinCases);
    ::setenv("RC_PARAMS", params.c_str(), /*overwrite=*/1);
  }
  return true;
}
inline const bool kDefaultCaseCount = default_case_count();

// The models are tiny (tensors of tens to hundreds of elements): intra-op threads cost more than
// they give. With one thread the path properties ran 8x faster on the 2-core CI machine (965 ms
// vs 8.1 s for 50 cases of StepEqualsScan under a loaded machine), and timings do not depend on
// what else runs beside the tests.
class SingleThreadedTorch : public ::testing::Environment {
 public:
  void SetUp() override { torch::set_num_threads(1); }
};
inline ::testing::Environment* const kSingleThreadedTorch =
    ::testing::AddGlobalTestEnvironment(new SingleThreadedTorch);

// ---------------------------------------------------------------------------------------------
// Tolerances of the properties (relative error max|a - b| / max|b|, see rel_err):
// float64 paths agree to 1e-9 (the math is exact up to ~1e-15 per op; 1e-9 leaves room for
// exp(dt*A) with |dt*A| up to 270 and a few layers); float32 paths to 1e-4 (~800 ulp at the
// scale: the chunked scan sums exp(cumsum differences) in another order than the recurrence), or
// more where the model amplifies rounding (float32_tolerance).
inline constexpr double kTolFloat64 = 1e-9;
inline constexpr double kTolFloat32 = 1e-4;

// ---------------------------------------------------------------------------------------------
inline void showValue(const ModelSpec& s, std::ostream& os) {
  os << s.family << ": V=" << s.vocab_size << " D=" << s.hidden_size << " layers=" << s.num_layers
     << " H=" << s.num_heads << " P=" << s.head_dim << " G=" << s.n_groups << " N=" << s.state_size
     << " expand=" << s.expand << " K=" << s.conv_kernel << " chunk=" << s.chunk_size << " A_log=[" << s.a_log_min
     << ", " << s.a_log_max << "] dt=[" << s.dt_min << ", " << s.dt_max << "] time_step_limit=(" << s.time_step_min
     << ", " << s.time_step_max << ") bias=" << s.use_bias << " conv_bias=" << s.use_conv_bias
     << " tied=" << s.tie_embeddings << " gated_norm=" << (s.grouped_norm ? "grouped" : "ungrouped")
     << " residual_fp32=" << s.residual_in_fp32 << " seed=" << s.seed;
}

// The real model of the table (d_model 768, 24 layers, 24 heads, head_dim 64, d_state 128,
// expand 2, n_groups 1 or 8, conv 4, chunk 256) shrunk: heads a divisor of 24, head_dim 64/16 or
// 64/8, d_state 128/32..128/8, chunk 256/64..256/16, 1-3 layers; HF's initialisation ranges for
// A (A_log in [0, ln 16]) and dt ([1e-3, 0.1]) and its default time_step_limit (0, inf).
inline rc::Gen<ModelSpec> gen_scaled_real_spec() {
  return rc::gen::exec([] {
    ModelSpec s;
    s.family = "scaled-real";
    s.num_heads = *rc::gen::element<int64_t>(2, 3, 4, 6, 8);
    s.head_dim = *rc::gen::element<int64_t>(4, 8);
    s.state_size = *rc::gen::element<int64_t>(4, 8, 16);
    s.expand = 2;
    s.hidden_size = s.num_heads * s.head_dim / s.expand;
    // n_groups 1 or 8 in the real table (8 of 24 heads = 3 heads per group): 1, or a divisor.
    s.n_groups = *rc::gen::weightedOneOf<int64_t>({{2, rc::gen::just<int64_t>(1)},
                                                   {1, rc::gen::elementOf(divisors(s.num_heads))}});
    s.conv_kernel = 4;
    s.chunk_size = *rc::gen::element<int64_t>(4, 8, 16);
    s.num_layers = *rc::gen::inRange<int64_t>(1, 4);
    s.vocab_size = *rc::gen::inRange<int64_t>(16, 65);
    s.a_log_min = 0.0;
    s.a_log_max = std::log(16.0);
    s.dt_min = 1e-3;
    s.dt_max = 0.1;
    s.use_bias = false;
    s.use_conv_bias = true;
    s.tie_embeddings = *rc::gen::arbitrary<bool>();
    s.grouped_norm = *rc::gen::weightedElement<bool>({{3, false}, {1, true}});
    s.residual_in_fp32 = true;
    s.seed = *rc::gen::arbitrary<uint32_t>();
    return s;
  });
}

// Edge cases: one head, one group, groups = heads, head_dim 1, d_state 1, chunk 1, conv 1,
// expand 1, extreme but valid A (A_log in [-3, 4]: A from -0.05 to -54.6), dt from 1e-4 to 5,
// time_step_limit finite and small or infinite, biases on and off.
inline rc::Gen<ModelSpec> gen_edge_spec() {
  return rc::gen::exec([] {
    ModelSpec s;
    s.family = "edge";
    s.num_heads = *rc::gen::weightedOneOf<int64_t>({{1, rc::gen::just<int64_t>(1)},
                                                    {2, rc::gen::inRange<int64_t>(1, 9)}});
    s.head_dim = *rc::gen::weightedOneOf<int64_t>({{1, rc::gen::just<int64_t>(1)},
                                                   {2, rc::gen::inRange<int64_t>(1, 9)}});
    s.state_size = *rc::gen::weightedOneOf<int64_t>({{1, rc::gen::just<int64_t>(1)},
                                                     {2, rc::gen::inRange<int64_t>(1, 17)}});
    const auto divs = divisors(s.num_heads);
    s.n_groups = *rc::gen::weightedOneOf<int64_t>({{1, rc::gen::just<int64_t>(1)},
                                                   {1, rc::gen::just(int64_t{s.num_heads})},
                                                   {1, rc::gen::elementOf(divs)}});
    s.expand = (s.num_heads * s.head_dim) % 2 == 0 ? *rc::gen::element<int64_t>(1, 2) : 1;
    s.hidden_size = s.num_heads * s.head_dim / s.expand;
    s.conv_kernel = *rc::gen::weightedElement<int64_t>({{1, 1}, {1, 2}, {1, 3}, {3, 4}});
    s.chunk_size = *rc::gen::weightedOneOf<int64_t>({{1, rc::gen::just<int64_t>(1)},
                                                     {2, rc::gen::inRange<int64_t>(1, 9)}});
    s.num_layers = *rc::gen::inRange<int64_t>(1, 4);
    s.vocab_size = *rc::gen::inRange<int64_t>(16, 65);
    const auto a = *rc::gen::element(std::make_pair(-3.0, 4.0), std::make_pair(-3.0, -3.0),
                                     std::make_pair(4.0, 4.0), std::make_pair(-3.0, 0.0), std::make_pair(2.0, 4.0));
    s.a_log_min = a.first;
    s.a_log_max = a.second;
    const auto dt = *rc::gen::element(std::make_pair(1e-4, 5.0), std::make_pair(1e-4, 1e-4),
                                      std::make_pair(5.0, 5.0), std::make_pair(1e-4, 1e-2), std::make_pair(1.0, 5.0));
    s.dt_min = dt.first;
    s.dt_max = dt.second;
    const double inf = std::numeric_limits<double>::infinity();
    const auto lim = *rc::gen::element(std::make_pair(0.0, inf), std::make_pair(0.0, 0.01),
                                       std::make_pair(0.001, 0.1), std::make_pair(0.5, 2.0));
    s.time_step_min = lim.first;
    s.time_step_max = lim.second;
    s.use_bias = *rc::gen::arbitrary<bool>();
    s.use_conv_bias = *rc::gen::arbitrary<bool>();
    s.tie_embeddings = *rc::gen::arbitrary<bool>();
    s.grouped_norm = *rc::gen::arbitrary<bool>();
    s.residual_in_fp32 = *rc::gen::arbitrary<bool>();
    s.seed = *rc::gen::arbitrary<uint32_t>();
    return s;
  });
}

// ---------------------------------------------------------------------------------------------
// Paths.
enum class PathKind { kReference, kChunked32, kChunked64, kPlain32 };

inline const char* path_kind_name(PathKind k) {
  switch (k) {
    case PathKind::kReference: return "reference";
    case PathKind::kChunked32: return "chunked-float32";
    case PathKind::kChunked64: return "chunked-float64";
    case PathKind::kPlain32: return "plain-float32";
  }
  return "?";
}
inline void showValue(PathKind k, std::ostream& os) { os << path_kind_name(k); }

// tol32: the float32 tolerance of the case (float32_tolerance; kTolFloat32 when not measured).
inline double tolerance(PathKind k, double tol32 = kTolFloat32) {
  return k == PathKind::kReference || k == PathKind::kChunked64 ? kTolFloat64 : tol32;
}

// chunk_size 0 = the config's.
inline std::unique_ptr<ExecutionPath> build_path(PathKind k, const Mamba2Checkpoint& ck, int64_t chunk_size = 0) {
  switch (k) {
    case PathKind::kReference: return std::make_unique<ReferencePath>(ck);
    case PathKind::kChunked32: return std::make_unique<ChunkedPath>(ck, torch::kFloat32, torch::kCPU, chunk_size);
    case PathKind::kChunked64: return std::make_unique<ChunkedPath>(ck, torch::kFloat64, torch::kCPU, chunk_size);
    case PathKind::kPlain32: return std::make_unique<PlainFloat32Path>(ck);
  }
  return nullptr;
}

// ---------------------------------------------------------------------------------------------
// Inputs.

// tokens: [B, T] int64 ids < vocab.
inline torch::Tensor random_tokens(int64_t batch, int64_t len, int64_t vocab, uint64_t seed) {
  at::Generator gen = torch_generator(seed);
  return torch::randint(vocab, {batch, len}, gen, torch::TensorOptions().dtype(torch::kInt64));
}

// A state perturbation for `config`: [B, H, P, N], or [H, P, N] when `broadcast`; N(0, scale^2).
inline torch::Tensor random_delta(const Mamba2Config& c, int64_t batch, bool broadcast, double scale, uint64_t seed,
                                  torch::ScalarType dtype = torch::kFloat32) {
  at::Generator gen = torch_generator(seed);
  std::vector<int64_t> shape = {c.num_heads, c.head_dim, c.state_size};
  if (!broadcast) shape.insert(shape.begin(), batch);
  return (torch::randn(shape, gen, torch::TensorOptions().dtype(torch::kFloat64)) * scale).to(dtype);
}

// Lengths around a chunk boundary (k*Q - 1, k*Q, k*Q + 1 for k = 1, 2) or anything in [1, max_len].
inline rc::Gen<int64_t> gen_length(int64_t chunk, int64_t max_len) {
  return rc::gen::weightedOneOf<int64_t>(
      {{2, rc::gen::inRange<int64_t>(1, max_len + 1)},
       {2, rc::gen::map(rc::gen::tuple(rc::gen::inRange<int64_t>(1, 3), rc::gen::inRange<int64_t>(-1, 2)),
                        [chunk](const std::tuple<int64_t, int64_t>& kd) {
                          return std::max<int64_t>(1, std::get<0>(kd) * chunk + std::get<1>(kd));
                        })},
       {1, rc::gen::just<int64_t>(1)}});
}

// ---------------------------------------------------------------------------------------------
// Comparisons.

// max|a - b| / max|b| over the whole tensor, in float64 (max|a - b| when b is all zero). Infinity
// when the shapes differ or either holds a NaN or an infinity (the model never makes one here).
inline double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.sizes() != b.sizes()) return std::numeric_limits<double>::infinity();
  const torch::Tensor x = a.detach().to(torch::kCPU, torch::kFloat64), y = b.detach().to(torch::kCPU, torch::kFloat64);
  if (!x.isfinite().all().item<bool>() || !y.isfinite().all().item<bool>()) {
    return std::numeric_limits<double>::infinity();
  }
  if (x.numel() == 0) return 0.0;
  const double diff = (x - y).abs().max().item<double>();
  const double scale = y.abs().max().item<double>();
  return scale > 0 ? diff / scale : diff;
}

inline std::vector<uint8_t> raw_bytes(const torch::Tensor& t) {
  const torch::Tensor c = t.detach().to(torch::kCPU).contiguous();
  std::vector<uint8_t> out(c.nbytes());
  if (!out.empty()) std::memcpy(out.data(), c.data_ptr(), out.size());
  return out;
}

// Same dtype, shape and bytes (NaN payloads and signed zeros included).
inline bool bytes_equal(const torch::Tensor& a, const torch::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() && raw_bytes(a) == raw_bytes(b);
}

inline std::string shape_str(const torch::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

// Writes special bit patterns at random positions of a CPU float tensor, through an integer view
// (never through float arithmetic): quiet NaNs with payloads, a signalling NaN, a negative NaN,
// -0.0, +inf and the smallest subnormal.
inline void plant_special_values(torch::Tensor& t, uint64_t seed, int64_t count) {
  TORCH_CHECK(t.is_contiguous() && t.device().is_cpu(), "plant_special_values: contiguous CPU tensors only");
  if (t.numel() == 0) return;
  at::Generator gen = torch_generator(seed);
  const torch::Tensor where = torch::randint(t.numel(), {count}, gen, torch::TensorOptions().dtype(torch::kInt64));
  const int64_t* idx = where.data_ptr<int64_t>();
  for (int64_t i = 0; i < count; ++i) {
    const int64_t k = idx[i];
    switch (t.element_size()) {
      case 8: {
        static const uint64_t kBits[] = {0x7FF800000000BEEFULL, 0x7FF0000000000123ULL, 0xFFF8000012345678ULL,
                                         0x8000000000000000ULL, 0x7FF0000000000000ULL, 0x0000000000000001ULL};
        std::memcpy(static_cast<uint8_t*>(t.data_ptr()) + 8 * k, &kBits[i % 6], 8);
        break;
      }
      case 4: {
        static const uint32_t kBits[] = {0x7FC0BEEFU, 0x7F800123U, 0xFFC12345U, 0x80000000U, 0x7F800000U, 0x00000001U};
        std::memcpy(static_cast<uint8_t*>(t.data_ptr()) + 4 * k, &kBits[i % 6], 4);
        break;
      }
      case 2: {
        static const uint16_t kBits[] = {0x7FC5, 0x7F81, 0xFFC3, 0x8000, 0x7F80, 0x0001};
        std::memcpy(static_cast<uint8_t*>(t.data_ptr()) + 2 * k, &kBits[i % 6], 2);
        break;
      }
      default: TORCH_CHECK(false, "plant_special_values: unsupported element size");
    }
  }
}

// Every attribute of a cache and every byte of its state tensors, with their storage addresses.
struct CacheImage {
  int64_t seqlen_offset = 0, batch_size = 0;
  torch::ScalarType conv_dtype = torch::kFloat32, state_dtype = torch::kFloat32;
  torch::Device device = torch::kCPU;
  std::vector<std::vector<int64_t>> conv_shapes, ssm_shapes;
  std::vector<std::vector<uint8_t>> conv_bytes, ssm_bytes;
  std::vector<const void*> conv_ptrs, ssm_ptrs;
};

inline CacheImage image_of(const Mamba2Cache& cache) {
  CacheImage im;
  im.seqlen_offset = cache.seqlen_offset;
  im.batch_size = cache.batch_size();
  im.conv_dtype = cache.conv_dtype();
  im.state_dtype = cache.state_dtype();
  im.device = cache.device();
  for (const auto& t : cache.conv_states) {
    im.conv_shapes.push_back(t.sizes().vec());
    im.conv_bytes.push_back(raw_bytes(t));
    im.conv_ptrs.push_back(t.data_ptr());
  }
  for (const auto& t : cache.ssm_states) {
    im.ssm_shapes.push_back(t.sizes().vec());
    im.ssm_bytes.push_back(raw_bytes(t));
    im.ssm_ptrs.push_back(t.data_ptr());
  }
  return im;
}

inline size_t first_differing_byte(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  const size_t n = std::min(a.size(), b.size());
  for (size_t i = 0; i < n; ++i)
    if (a[i] != b[i]) return i;
  return n;
}

// "" when `got` equals `want` in every attribute and byte (and, if `same_storage`, address);
// otherwise the first difference, named.
inline std::string image_difference(const CacheImage& want, const CacheImage& got, bool same_storage) {
  std::ostringstream os;
  if (got.seqlen_offset != want.seqlen_offset) {
    os << "seqlen_offset " << got.seqlen_offset << " != " << want.seqlen_offset;
  } else if (got.batch_size != want.batch_size) {
    os << "batch_size " << got.batch_size << " != " << want.batch_size;
  } else if (got.conv_dtype != want.conv_dtype || got.state_dtype != want.state_dtype) {
    os << "dtypes changed";
  } else if (got.device != want.device) {
    os << "device changed";
  } else if (got.conv_shapes != want.conv_shapes || got.ssm_shapes != want.ssm_shapes) {
    os << "state shapes changed";
  } else {
    for (size_t l = 0; l < want.ssm_bytes.size() && os.tellp() == 0; ++l) {
      if (same_storage && got.conv_ptrs[l] != want.conv_ptrs[l]) {
        os << "conv_states[" << l << "] moved to new storage";
      } else if (same_storage && got.ssm_ptrs[l] != want.ssm_ptrs[l]) {
        os << "ssm_states[" << l << "] moved to new storage";
      } else if (got.conv_bytes[l] != want.conv_bytes[l]) {
        os << "conv_states[" << l << "] differs from byte " << first_differing_byte(got.conv_bytes[l], want.conv_bytes[l]);
      } else if (got.ssm_bytes[l] != want.ssm_bytes[l]) {
        os << "ssm_states[" << l << "] differs from byte " << first_differing_byte(got.ssm_bytes[l], want.ssm_bytes[l]);
      }
    }
  }
  return os.str();
}

// ---------------------------------------------------------------------------------------------
// Running token sequences.

// Runs `tokens` ([B, T]) through `path` as consecutive forwards of the given lengths (summing to
// T); returns the logits of all T tokens, concatenated: [B, T, V].
inline torch::Tensor run_pieces(ExecutionPath& path, Mamba2Cache& cache, const torch::Tensor& tokens,
                                const std::vector<int64_t>& lengths) {
  std::vector<torch::Tensor> logits;
  int64_t at = 0;
  for (int64_t n : lengths) {
    logits.push_back(path.forward(tokens.narrow(1, at, n), cache).logits);
    at += n;
  }
  return torch::cat(logits, 1);
}

// The float32 tolerance of one case, by SPEC §7's rule (harness/compare.h): TolerancePolicy's
// multiplier times the error the plain float32 loops make against the float64 reference on the
// same tokens (logits and final states), and never below kTolFloat32. The fixed 1e-4 alone failed
// on ill-conditioned models that are nonetheless valid: hidden_size 1 makes every RMSNorm a
// near-sign function, and 3 such layers amplified float32 rounding to 1.5e-4 between two
// correct float32 runs (SplitEqualsWhole, edge: D=1 H=1 P=1 N=10 layers=3).
inline double float32_tolerance(const Mamba2Checkpoint& ck, const torch::Tensor& tokens,
                                const std::vector<int64_t>& pieces) {
  auto reference = build_path(PathKind::kReference, ck), plain = build_path(PathKind::kPlain32, ck);
  Mamba2Cache rc_ = reference->new_cache(tokens.size(0)), pc = plain->new_cache(tokens.size(0));
  double err = rel_err(run_pieces(*plain, pc, tokens, pieces), run_pieces(*reference, rc_, tokens, pieces));
  for (size_t l = 0; l < rc_.ssm_states.size(); ++l) {
    err = std::max({err, rel_err(pc.ssm_states[l], rc_.ssm_states[l]), rel_err(pc.conv_states[l], rc_.conv_states[l])});
  }
  return std::max(kTolFloat32, TolerancePolicy{}.multiplier * err);
}

// ---------------------------------------------------------------------------------------------
// Op scripts (the scenario ops of SPEC §5), generated as plain values so a failure prints them.
struct ScriptOp {
  OpKind kind = OpKind::kForward;
  int64_t length = 1;      // forward: tokens per row
  int64_t layer = 0;       // inject
  bool broadcast = false;  // inject: [H, P, N] instead of [B, H, P, N]
  double scale = 1.0;      // inject: N(0, scale^2) entries
  bool delta_f64 = false;  // inject: the delta's dtype (float64 or float32)
  std::string name;        // snapshot / restore
  uint32_t seed = 0;       // forward: tokens; inject: delta
};

inline void showValue(const ScriptOp& op, std::ostream& os) {
  os << op_kind_name(op.kind);
  switch (op.kind) {
    case OpKind::kForward: os << "(T=" << op.length << ", seed=" << op.seed << ")"; break;
    case OpKind::kInject:
      os << "(layer=" << op.layer << (op.broadcast ? ", [H,P,N]" : ", [B,H,P,N]") << ", scale=" << op.scale
         << (op.delta_f64 ? ", f64" : ", f32") << ", seed=" << op.seed << ")";
      break;
    case OpKind::kSnapshot:
    case OpKind::kRestore: os << "(" << op.name << ")"; break;
    case OpKind::kReset: break;
  }
}

// 1..max_ops ops, the first a forward; restores name only snapshots taken earlier. Forward lengths
// favour 1 (step) and chunk boundaries.
inline rc::Gen<std::vector<ScriptOp>> gen_script(const ModelSpec& spec, int64_t max_ops, bool with_snapshots = true) {
  return rc::gen::exec([spec, max_ops, with_snapshots] {
    const int64_t n = *rc::gen::inRange<int64_t>(1, max_ops + 1);
    std::vector<ScriptOp> ops;
    std::vector<std::string> taken;
    for (int64_t i = 0; i < n; ++i) {
      ScriptOp op;
      if (i == 0) {
        op.kind = OpKind::kForward;
      } else if (with_snapshots) {
        op.kind = *rc::gen::weightedElement<OpKind>({{5, OpKind::kForward}, {2, OpKind::kInject}, {1, OpKind::kSnapshot},
                                                     {taken.empty() ? 0u : 1u, OpKind::kRestore}, {1, OpKind::kReset}});
      } else {
        op.kind = *rc::gen::weightedElement<OpKind>({{3, OpKind::kForward}, {1, OpKind::kInject}});
      }
      switch (op.kind) {
        case OpKind::kForward:
          op.length = *gen_length(spec.chunk_size, 2 * spec.chunk_size + 2);
          op.seed = *rc::gen::arbitrary<uint32_t>();
          break;
        case OpKind::kInject:
          op.layer = *rc::gen::inRange<int64_t>(0, spec.num_layers);
          op.broadcast = *rc::gen::arbitrary<bool>();
          op.scale = *rc::gen::element(1e-3, 1.0, 10.0);
          op.delta_f64 = *rc::gen::arbitrary<bool>();
          op.seed = *rc::gen::arbitrary<uint32_t>();
          break;
        case OpKind::kSnapshot:
          op.name = *rc::gen::element<std::string>("s0", "s1");
          taken.push_back(op.name);
          break;
        case OpKind::kRestore: op.name = *rc::gen::elementOf(taken); break;
        case OpKind::kReset: break;
      }
      ops.push_back(op);
    }
    return ops;
  });
}

// The scenario of `ops` for a model with config `c`, batch `batch` (tokens and deltas drawn from
// each op's seed).
inline Scenario to_scenario(const std::vector<ScriptOp>& ops, const Mamba2Config& c, int64_t batch) {
  Scenario s;
  s.model = "model";
  s.model_dir = "model";
  s.dtype = torch::kFloat32;
  for (const auto& o : ops) {
    ScenarioOp op;
    op.kind = o.kind;
    switch (o.kind) {
      case OpKind::kForward: op.tokens = random_tokens(batch, o.length, c.vocab_size, o.seed); break;
      case OpKind::kInject:
        op.layer = o.layer;
        op.delta = random_delta(c, batch, o.broadcast, o.scale, o.seed, o.delta_f64 ? torch::kFloat64 : torch::kFloat32);
        break;
      case OpKind::kSnapshot:
      case OpKind::kRestore: op.name = o.name; break;
      case OpKind::kReset: break;
    }
    s.ops.push_back(std::move(op));
  }
  return s;
}

// The dispatch trace SPEC §3 implies for `ops`: per forward, per layer, prefill when the cache is
// empty, step when T == 1, continue otherwise (snapshot/restore/reset move seqlen_offset).
inline std::vector<std::vector<DispatchRecord>> expected_traces(const std::vector<ScriptOp>& ops, int64_t layers) {
  std::vector<std::vector<DispatchRecord>> traces;
  int64_t offset = 0;
  std::map<std::string, int64_t> saved;
  for (const auto& o : ops) {
    std::vector<DispatchRecord> t;
    switch (o.kind) {
      case OpKind::kForward: {
        const Branch b = offset == 0 ? Branch::kPrefill : o.length == 1 ? Branch::kStep : Branch::kContinue;
        for (int64_t l = 0; l < layers; ++l) t.push_back({l, b, logical_kernels(b)});
        offset += o.length;
        break;
      }
      case OpKind::kSnapshot: saved[o.name] = offset; break;
      case OpKind::kRestore: offset = saved.at(o.name); break;
      case OpKind::kReset: offset = 0; break;
      case OpKind::kInject: break;
    }
    traces.push_back(std::move(t));
  }
  return traces;
}

inline std::string trace_string(const std::vector<DispatchRecord>& t) {
  std::ostringstream os;
  for (const auto& r : t) os << "[layer " << r.layer << " " << branch_name(r.branch) << " " << r.kernels << "]";
  return os.str();
}

}  // namespace mambadiff::props

namespace rc {
template <>
struct Arbitrary<mambadiff::props::ModelSpec> {
  static Gen<mambadiff::props::ModelSpec> arbitrary() {
    return gen::weightedOneOf<mambadiff::props::ModelSpec>(
        {{1, mambadiff::props::gen_scaled_real_spec()}, {1, mambadiff::props::gen_edge_spec()}});
  }
};
}  // namespace rc
