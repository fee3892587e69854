// Fuzz target scan_diff: the SSM scan of one layer on raw inputs. The chunked SSD scan (prefill
// with an initial state, as the continue branch runs it) and the single-token state update, run
// token by token, must both agree with the oracle's float64 recurrence (oracles/, ssm_token_step)
// under the harness's tolerance policy (harness/compare.h: 4x the plain float32 loops' error +
// floor), and a configuration the product accepts must run on every path (none may reject it).
//
// Input bytes (any length; missing bytes read as 0):
//   [0] heads H 1..8   [1] head_dim P 1..8   [2] d_state N 1..16   [3] groups G (a divisor of H)
//   [4] chunk Q 0..16 (0: invalid, the config rejects it)   [5] length T 1..64   [6] batch 1..2
//   [7] time_step_limit min  [8] max (from kLimits; max < min is invalid)   [9..12] seed
//   [13] scale of x   [14] scale of B, C   [15] scale of dt_raw   [16] initial state scale (0: zero)
//   then per head: A_log byte (A_log in [-3, 4]), dt byte (softplus(dt_bias) log-uniform in
//   [1e-4, 5]), D byte; then "pokes" of 3 bytes (tensor, position, value from kPokeValues) that
//   overwrite single inputs with edge values.
// The paths: `chunked` on the CPU (MAMBADIFF_FUZZ_MUTANT's path in its place), and with a CUDA
// device `chunked-gpu` and `cuda`. A finding is written as a model-level case (one layer with this
// scan's config: prefill, inject the initial state, continue over T tokens, restore, T steps).
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "engine/chunked_path.h"
#include "engine/errors.h"
#include "fuzz/fuzz_support.h"
#include "fuzz/kernel_counters.h"
#include "harness/path_registry.h"
#include "harness/tolerance_baseline.h"
#include "oracles/reference_path.h"
#include "mutants/catalog.h"
#include "tests/random_model.h"

namespace mambadiff::fuzz::scan_diff_target {
namespace {

using props::ModelSpec;

constexpr double kInf = std::numeric_limits<double>::infinity();
// time_step_limit ends: 0 and inf (HF's default), the initialisation range's ends, values that
// clamp often (0.01, 0.05) and large ones.
const std::vector<double> kLimits = {0.0, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, kInf};
// Edge values a poke writes: zeros, tiny, huge (exp overflow past ~88.7 in float32 when multiplied
// by A), negative.
const std::vector<float> kPokeValues = {0.0f, -0.0f, 1e-30f, 1.0f, -1.0f, 10.0f, -10.0f, 100.0f, 1e4f, -1e4f, 30.0f};

// Reaches ChunkedPath's logical kernels (protected: the model calls them; mutants override them).
// A pointer to a protected member named through a derived class is a pointer to the base's member,
// and calling through it dispatches virtually, so a mutant's override is what runs.
struct KernelAccess : ChunkedPath {
  static auto discretize_dt_fn() { return &KernelAccess::discretize_dt; }
  static auto chunk_scan_fn() { return &KernelAccess::ssd_chunk_scan; }
  static auto state_update_fn() { return &KernelAccess::selective_state_update; }
};

struct ScanCase {
  ModelSpec spec;                // one layer with the scan's config (the case's model)
  torch::Tensor A_log, dt_bias, D;  // float32 [H]
  int64_t T = 1, batch = 1;
  torch::Tensor x, dt_raw, Bm, Cm, init;  // float32: [B,T,H,P], [B,T,H], [B,T,G,N] x2, [B,H,P,N]
};

ScanCase decode(ByteReader& in) {
  ScanCase c;
  ModelSpec& s = c.spec;
  s.family = "scan_diff";
  s.num_heads = in.in_range(1, 8);
  s.head_dim = in.in_range(1, 8);
  s.state_size = in.in_range(1, 16);
  s.n_groups = in.pick(props::divisors(s.num_heads));
  s.chunk_size = in.in_range(0, 16);
  c.T = in.in_range(1, 64);
  c.batch = in.in_range(1, 2);
  s.time_step_min = in.pick(kLimits);
  s.time_step_max = in.pick(kLimits);
  s.seed = in.u32();
  const double x_scale = in.byte() / 32.0, bc_scale = in.byte() / 32.0, dt_scale = in.byte() / 32.0,
               init_scale = in.byte() / 32.0;
  s.num_layers = 1;
  s.expand = 1;
  s.hidden_size = s.num_heads * s.head_dim;
  s.vocab_size = 16;
  const int64_t H = s.num_heads;
  std::vector<float> A_log, dt_bias, D;  // [H]
  for (int64_t h = 0; h < H; ++h) {
    A_log.push_back(static_cast<float>(-3.0 + 7.0 * in.byte() / 255.0));  // A = -exp(A_log): -0.05 .. -54.6
    const double dt0 = std::exp(std::log(1e-4) + (std::log(5.0) - std::log(1e-4)) * in.byte() / 255.0);
    dt_bias.push_back(static_cast<float>(dt0 + std::log(-std::expm1(-dt0))));  // softplus^-1(dt0)
    D.push_back(static_cast<float>((in.byte() - 128) / 32.0));
  }
  c.A_log = torch::tensor(A_log);
  c.dt_bias = torch::tensor(dt_bias);
  c.D = torch::tensor(D);
  const int64_t B = c.batch, T = c.T, P = s.head_dim, G = s.n_groups, N = s.state_size;
  at::Generator gen = props::torch_generator(s.seed);
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  c.x = torch::randn({B, T, H, P}, gen, f32) * x_scale;
  c.dt_raw = torch::randn({B, T, H}, gen, f32) * dt_scale;
  c.Bm = torch::randn({B, T, G, N}, gen, f32) * bc_scale;
  c.Cm = torch::randn({B, T, G, N}, gen, f32) * bc_scale;
  c.init = torch::randn({B, H, P, N}, gen, f32) * init_scale;
  torch::Tensor* pokeable[] = {&c.x, &c.dt_raw, &c.Bm, &c.Cm, &c.init};
  while (in.remaining() >= 3) {
    torch::Tensor& t = *pokeable[in.byte() % 5];
    const int64_t at = in.byte() % t.numel();
    t.view({-1})[at] = in.pick(kPokeValues);
  }
  return c;
}

// The oracle's loops in Scalar over the case: op 0 and op 1 of the result both hold the
// recurrence's y ([B, T, H*P]) and final state (the chunked scan and the steps are compared with
// the same sequential answer).
template <typename S>
ScenarioResult sequential(const ScanCase& c, const std::string& path, const std::string& dtype,
                          uint64_t rounding_seed = 0) {
  const ModelSpec& s = c.spec;
  const int64_t B = c.batch, T = c.T, H = s.num_heads, P = s.head_dim, G = s.n_groups, N = s.state_size;
  // Inputs rounded to the modelled dtype, held in the buffers of S (float64 for stochastic rounding).
  auto flat = [&](const torch::Tensor& t) { return t.to(kDtype<S>).to(kStorage<S>).contiguous(); };
  const torch::Tensor x = flat(c.x), dt_raw = flat(c.dt_raw), Bm = flat(c.Bm), Cm = flat(c.Cm);
  torch::Tensor state = flat(c.init).clone();  // [B, H, P, N]
  torch::Tensor y = torch::empty({B, T, H * P}, kStorage<S>);
  const torch::Tensor A_log = flat(c.A_log), dt_bias = flat(c.dt_bias), D = flat(c.D);
  const SsmShape shape{H, P, N, G, s.time_step_min, s.time_step_max};
  const sr::RoundingSeed rounding(rounding_seed);  // used only by the stochastic instance
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      ssm_token_step<S>(shape, data<S>(x) + (b * T + t) * H * P, data<S>(Bm) + (b * T + t) * G * N,
                        data<S>(Cm) + (b * T + t) * G * N, data<S>(dt_raw) + (b * T + t) * H, data<S>(dt_bias),
                        data<S>(A_log), data<S>(D), data<S>(state) + b * H * P * N,
                        data<S>(y) + (b * T + t) * H * P);
  ScenarioResult r;
  r.path = path;
  r.dtype = dtype;
  for (size_t op = 0; op < 2; ++op) {
    OpResult o;
    o.op_index = op;
    o.logits = y;
    o.cache.ssm_states = {state};
    o.cache.conv_states = {torch::zeros({B, 1, 1}, kStorage<S>)};  // no conv in a scan: an empty stand-in
    o.cache.seqlen_offset = T;
    r.ops.push_back(std::move(o));
  }
  r.final_cache = r.ops.back().cache;
  return r;
}

// The path's kernels: op 0 the chunked scan from the initial state (the continue branch), op 1 the
// state update token by token (the step branch), both with the path's dt discretization.
ScenarioResult on_path(ChunkedPath& path, const ScanCase& c) {
  const torch::Device dev = path.device();
  const int64_t B = c.batch, T = c.T, H = c.spec.num_heads, P = c.spec.head_dim;
  const torch::Tensor x = c.x.to(dev), dt_raw = c.dt_raw.to(dev), Bm = c.Bm.to(dev), Cm = c.Cm.to(dev),
                      init = c.init.to(dev);
  ScenarioResult r;
  r.path = path.name();
  r.dtype = "float32";
  auto op_result = [&](size_t op, const torch::Tensor& y, const torch::Tensor& state) {
    OpResult o;
    o.op_index = op;
    o.logits = y.reshape({B, T, H * P}).to(torch::kCPU, torch::kFloat32);
    o.cache.ssm_states = {state.to(torch::kCPU, torch::kFloat32)};
    o.cache.conv_states = {torch::zeros({B, 1, 1})};
    o.cache.seqlen_offset = T;
    r.ops.push_back(std::move(o));
  };
  {
    const torch::Tensor dt = (path.*KernelAccess::discretize_dt_fn())(0, dt_raw, Branch::kContinue);  // [B, T, H]
    auto [y, state] = (path.*KernelAccess::chunk_scan_fn())(0, x, dt, Bm, Cm, init);
    op_result(0, y, state);
  }
  {
    torch::Tensor state = init.clone();
    std::vector<torch::Tensor> ys;
    for (int64_t t = 0; t < T; ++t) {
      const torch::Tensor dt = (path.*KernelAccess::discretize_dt_fn())(0, dt_raw.narrow(1, t, 1), Branch::kStep);
      auto [y, next] = (path.*KernelAccess::state_update_fn())(0, x.select(1, t), dt.squeeze(1), Bm.select(1, t),
                                                               Cm.select(1, t), state);
      ys.push_back(y);  // [B, H, P]
      state = next;
    }
    op_result(1, torch::stack(ys, 1), state);
  }
  r.final_cache = r.ops.back().cache;
  return r;
}

// The checkpoint of the case's one-layer model with this scan's A, dt_bias and D. The paths under
// test are built from its kZeros form: the scan kernels read only those three (the random
// projections, norms and embeddings are the model-level case's, drawn when a finding is written).
Mamba2Checkpoint case_checkpoint(const ScanCase& c, props::WeightFill fill = props::WeightFill::kRandom) {
  Mamba2Checkpoint ck = props::make_checkpoint(c.spec, fill);
  LayerWeights& l = ck.weights.layers[0];
  l.A_log = c.A_log;  // the case's tensors: no path writes its weights
  l.dt_bias = c.dt_bias;
  l.D = c.D;
  return ck;
}

// The finding as a model-level scenario: prefill one token, inject the initial state, snapshot,
// continue over T tokens (the chunked scan from a state), restore, then T single-token steps.
Scenario case_scenario(const ScanCase& c) {
  Scenario s;
  s.dtype = torch::kFloat32;
  const torch::Tensor tokens = torch::randint(c.spec.vocab_size, {c.batch, c.T + 1},
                                              props::torch_generator(c.spec.seed + 1), torch::kInt64);
  auto forward = [&](int64_t from, int64_t len) {
    ScenarioOp op;
    op.kind = OpKind::kForward;
    op.tokens = tokens.narrow(1, from, len).contiguous();
    s.ops.push_back(op);
  };
  forward(0, 1);
  ScenarioOp inject;
  inject.kind = OpKind::kInject;
  inject.layer = 0;
  inject.delta = c.init;
  s.ops.push_back(inject);
  ScenarioOp snap;
  snap.kind = OpKind::kSnapshot;
  snap.name = "before-continue";
  s.ops.push_back(snap);
  forward(1, c.T);
  ScenarioOp restore = snap;
  restore.kind = OpKind::kRestore;
  s.ops.push_back(restore);
  for (int64_t t = 0; t < c.T; ++t) forward(1 + t, 1);
  return s;
}

[[noreturn]] void finding(const ScanCase& c, const std::string& path, const Signature& sig, const std::string& detail) {
  const Mamba2Checkpoint ck = case_checkpoint(c);
  const Scenario s = case_scenario(c);
  try {
    const CaseRun run = run_paths(s, ck, path, "reference", TolerancePolicy{});
    if (run.comparison.agree) std::fprintf(stderr, "mambadiff-fuzz: note: the model-level case agrees\n");
    report_finding(sig, detail, &s, &ck, &run);
  } catch (const std::exception& e) {
    report_finding(sig, detail + "; no case: " + first_line(e), nullptr, nullptr, nullptr);
  }
}

std::unique_ptr<ExecutionPath> build(const std::string& name, const Mamba2Checkpoint& ck) {
  if (name.rfind(mutants::kMutantPrefix, 0) == 0) return mutants::find_mutant(name).make_path(ck, torch::kFloat32);
  return make_path(name, ck, torch::kFloat32);
}

}  // namespace
}  // namespace mambadiff::fuzz::scan_diff_target

MAMBADIFF_FUZZ_INITIALIZE(scan_diff) {
  mambadiff::fuzz::init_differential_target();
  return 0;
}

MAMBADIFF_FUZZ_TEST_ONE_INPUT(scan_diff) {
  using namespace mambadiff::fuzz::scan_diff_target;  // this target's helpers
  const mambadiff::fuzz::PublishKernelCoverageOnReturn kernel_coverage;  // fuzz/kernel_counters.h
  using namespace mambadiff;
  using namespace mambadiff::fuzz;
  // No autograd: the paths' forwards need no graph, and each ATen op skips its bookkeeping.
  c10::InferenceMode no_autograd;
  ByteReader in(data, size);
  const ScanCase c = decode(in);
  try {
    c.spec.config().validate("scan_diff");
  } catch (const InputError&) {
    return 0;  // a config the product rejects (chunk 0, max < min): no path is ever built for it
  }
  const Mamba2Checkpoint ck = case_checkpoint(c, props::WeightFill::kZeros);
  const ScenarioResult ref = sequential<double>(c, "reference", "float64");
  // The tolerance baseline as the harness derives it (harness/tolerance_baseline.h): the plain
  // float32 loops' error, and -- only for a comparison that diverges under that alone, the verdict
  // being the same -- the worst of the same loops under stochastic rounding.
  std::vector<ErrorBaseline> baselines = {measure_baseline(sequential<float>(c, "plain-float32", "float32"), ref)};
  bool stochastic_sampled = false;
  auto add_stochastic_runs = [&] {
    for (int run = 0; run < kStochasticBaselineRuns; ++run) {
      const uint64_t seed = kStochasticBaselineSeed + static_cast<uint64_t>(run);
      add_stochastic_run(baselines.front(),
                         measure_baseline(sequential<sr::StochasticFloat32>(c, "plain-float32", "float32", seed), ref));
    }
    stochastic_sampled = true;
  };
  // The plain float32 loops overflowed (or the oracle itself did) where float32 cannot hold the
  // values: no float32 tolerance can be derived for this input, so it tests nothing (a non-finite
  // tolerance is never used: compare_results would call every path divergent here).
  for (const auto& [key, error] : baselines.front().error) {
    if (!std::isfinite(error)) return 0;
  }
  for (const std::string& name : paths_under_test(torch::kFloat32)) {
    ScenarioResult got;
    try {
      auto path = build(name, ck);
      auto* chunked = dynamic_cast<ChunkedPath*>(path.get());
      if (!chunked) return 0;  // not built on the chunked kernels: nothing of the scan to call
      got = on_path(*chunked, c);
    } catch (const PathUnavailable&) {
      continue;  // no device for it here
    } catch (const std::exception& e) {
      // The oracle ran this configuration: a path that rejects it breaks "all reject or none".
      finding(c, name, {"scan_diff", "construct", "0", "reject", name}, name + " rejects: " + first_line(e));
    }
    Comparison cmp = compare_results(got, ref, ref, baselines);
    if (!cmp.agree && !stochastic_sampled) {
      add_stochastic_runs();
      cmp = compare_results(got, ref, ref, baselines);
    }
    if (cmp.agree) continue;
    const Divergence& d = *cmp.first_divergence;
    const bool scan = d.op == 0;
    const std::string tensor = d.tensor == "logits" ? "y" : d.tensor == "cache.ssm_states" ? "state" : d.tensor;
    finding(c, name, {"scan_diff", scan ? "ssd_chunk_scan" : "selective_state_update", "0", tensor, scan ? "continue" : "step"},
            fmt::format("{} vs reference: {}", name, describe(d)));
  }
  return 0;
}
