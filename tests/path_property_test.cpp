// Properties of the execution paths (SPEC §2-§4), checked with RapidCheck on random models built
// in memory (tests/property_support.h): decoding equals scanning, the chunk size and the split
// of a sequence do not matter, batch rows are independent, one step is affine in the state, runs
// are deterministic, and every path dispatches alike. Each property runs at least 200 cases; a
// failure prints the shrunk case and the RC_PARAMS="reproduce=..." line that replays it.
#include <algorithm>

#include "engine/aten_ops.h"
#include "harness/path_registry.h"
#include "harness/scenario.h"
#include "harness/scenario_runner.h"
#include "tests/property_support.h"

namespace mambadiff::props {
namespace {

// Every path the properties compare; float64 ones are held to 1e-9, float32 ones to 1e-4.
const std::vector<PathKind> kAllKinds = {PathKind::kReference, PathKind::kChunked32, PathKind::kChunked64,
                                         PathKind::kPlain32};

// Compares logits and the final cache of two runs of one path within `tol` (relative error).
void assert_runs_agree(const char* what, PathKind kind, const torch::Tensor& logits_a, const Mamba2Cache& a,
                       const torch::Tensor& logits_b, const Mamba2Cache& b, double tol) {
  const double e = rel_err(logits_a, logits_b);
  PROP_ASSERT(e <= tol, path_kind_name(kind) << ": " << what << ": logits rel err " << e << " > " << tol);
  PROP_ASSERT(a.seqlen_offset == b.seqlen_offset,
              path_kind_name(kind) << ": " << what << ": seqlen_offset " << a.seqlen_offset << " != " << b.seqlen_offset);
  for (size_t l = 0; l < a.ssm_states.size(); ++l) {
    const double es = rel_err(a.ssm_states[l], b.ssm_states[l]);
    PROP_ASSERT(es <= tol, path_kind_name(kind) << ": " << what << ": ssm_states[" << l << "] rel err " << es << " > " << tol);
    const double ec = rel_err(a.conv_states[l], b.conv_states[l]);
    PROP_ASSERT(ec <= tol, path_kind_name(kind) << ": " << what << ": conv_states[" << l << "] rel err " << ec << " > " << tol);
  }
}

// ---------------------------------------------------------------------------------------------
// SPEC §3: prefill(N) then M single-token steps gives the logits and final states of
// prefill(N + M), on every path.
RC_GTEST_PROP(PathProperty, StepEqualsScan, (const ModelSpec& spec)) {
  RC_TAG(spec.family);
  const int64_t batch = *rc::gen::inRange<int64_t>(1, 4);
  const int64_t n = *gen_length(spec.chunk_size, 2 * spec.chunk_size + 2);
  const int64_t m = *rc::gen::inRange<int64_t>(1, 7);
  const uint32_t seed = *rc::gen::arbitrary<uint32_t>();

  const auto ck = make_checkpoint(spec);
  const torch::Tensor tokens = random_tokens(batch, n + m, ck.config.vocab_size, seed);
  std::vector<int64_t> stepped = {n};
  stepped.resize(static_cast<size_t>(1 + m), 1);
  const double tol32 = float32_tolerance(ck, tokens, {n + m});
  for (PathKind kind : kAllKinds) {
    auto path = build_path(kind, ck);
    Mamba2Cache decoded = path->new_cache(batch), scanned = path->new_cache(batch);
    const torch::Tensor a = run_pieces(*path, decoded, tokens, stepped);
    const torch::Tensor b = path->forward(tokens, scanned).logits;
    assert_runs_agree("prefill(N) + M steps vs prefill(N+M)", kind, a, decoded, b, scanned, tolerance(kind, tol32));
  }
}

// The chunked path at chunk sizes 1, 2, 3, 7, 8, 64 and >= L agrees with the reference, through a
// prefill and a continue (which starts from the cached state).
RC_GTEST_PROP(PathProperty, ChunkSizeDoesNotMatter, (const ModelSpec& spec)) {
  RC_TAG(spec.family);
  const int64_t batch = *rc::gen::inRange<int64_t>(1, 3);
  const int64_t len = *rc::gen::weightedOneOf<int64_t>(
      {{1, rc::gen::inRange<int64_t>(1, 72)},
       {1, rc::gen::element<int64_t>(1, 2, 3, 4, 6, 7, 8, 9, 15, 16, 17, 63, 64, 65)}});
  const int64_t cont = *rc::gen::element<int64_t>(0, 2, 3, 8, 9);
  const int64_t beyond = *rc::gen::inRange<int64_t>(1, 100);
  const uint32_t seed = *rc::gen::arbitrary<uint32_t>();

  const auto ck = make_checkpoint(spec);
  const torch::Tensor tokens = random_tokens(batch, len + cont, ck.config.vocab_size, seed);
  std::vector<int64_t> pieces = {len};
  if (cont > 0) pieces.push_back(cont);
  auto reference = build_path(PathKind::kReference, ck);
  Mamba2Cache want = reference->new_cache(batch);
  const torch::Tensor want_logits = run_pieces(*reference, want, tokens, pieces);
  const double tol32 = float32_tolerance(ck, tokens, pieces);
  for (int64_t chunk : {int64_t{1}, int64_t{2}, int64_t{3}, int64_t{7}, int64_t{8}, int64_t{64}, len, len + beyond}) {
    auto path = build_path(PathKind::kChunked32, ck, chunk);
    PROP_ASSERT(static_cast<ChunkedPath*>(path.get())->chunk_size() == chunk, "chunk_size not taken");
    Mamba2Cache got = path->new_cache(batch);
    const torch::Tensor got_logits = run_pieces(*path, got, tokens, pieces);
    const std::string what = "chunk_size " + std::to_string(chunk) + " vs reference";
    assert_runs_agree(what.c_str(), PathKind::kChunked32, got_logits, got, want_logits, want, tol32);
  }
}

// forward(a) then a continue of b (b >= 2 tokens) equals forward(a + b), on every path.
RC_GTEST_PROP(PathProperty, SplitEqualsWhole, (const ModelSpec& spec)) {
  RC_TAG(spec.family);
  const int64_t batch = *rc::gen::inRange<int64_t>(1, 4);
  const int64_t a = *gen_length(spec.chunk_size, 2 * spec.chunk_size + 2);
  const int64_t b = std::max<int64_t>(2, *gen_length(spec.chunk_size, 2 * spec.chunk_size + 2));
  const uint32_t seed = *rc::gen::arbitrary<uint32_t>();

  const auto ck = make_checkpoint(spec);
  const torch::Tensor tokens = random_tokens(batch, a + b, ck.config.vocab_size, seed);
  const double tol32 = float32_tolerance(ck, tokens, {a + b});
  for (PathKind kind : kAllKinds) {
    auto path = build_path(kind, ck);
    Mamba2Cache split = path->new_cache(batch), whole = path->new_cache(batch);
    path->forward(tokens.narrow(1, 0, a), split);
    PROP_ASSERT(split.dispatch(b) == Branch::kContinue, "the second piece does not dispatch to continue");
    const torch::Tensor second = path->forward(tokens.narrow(1, a, b), split).logits;
    const torch::Tensor all = path->forward(tokens, whole).logits;
    assert_runs_agree("forward(a) + continue(b) vs forward(a+b)", kind, second, split, all.narrow(1, a, b), whole,
                      tolerance(kind, tol32));
  }
}

// Row i of a batch (prefill, an injection, a step, a continue) equals that row run alone. The
// reference computes each row with the same loops, so it must match bitwise; the chunked path's
// batched GEMMs may block differently for another batch size, so it gets the float32 tolerance.
RC_GTEST_PROP(PathProperty, BatchRowsAreIndependent, (const ModelSpec& spec)) {
  RC_TAG(spec.family);
  const PathKind kind = *rc::gen::element(PathKind::kReference, PathKind::kChunked32);
  const int64_t batch = *rc::gen::inRange<int64_t>(2, 5);
  const int64_t prefill = *gen_length(spec.chunk_size, 2 * spec.chunk_size + 2);
  const int64_t cont = *rc::gen::inRange<int64_t>(2, 2 * spec.chunk_size + 3);
  const bool inject = *rc::gen::arbitrary<bool>();
  const bool broadcast = *rc::gen::arbitrary<bool>();
  const int64_t layer = *rc::gen::inRange<int64_t>(0, spec.num_layers);
  const uint32_t seed = *rc::gen::arbitrary<uint32_t>();

  const auto ck = make_checkpoint(spec);
  const auto& c = ck.config;
  auto path = build_path(kind, ck);
  const torch::Tensor tokens = random_tokens(batch, prefill + 1 + cont, c.vocab_size, seed);  // [B, T]
  const torch::Tensor delta = random_delta(c, batch, broadcast, 1.0, seed + 1);  // [B, H, P, N] or [H, P, N]
  const std::vector<int64_t> pieces = {prefill, 1, cont};

  // The script: prefill, optional injection, step, continue; logits of every token.
  auto play = [&](Mamba2Cache& cache, const torch::Tensor& toks, const torch::Tensor& d) {
    std::vector<torch::Tensor> logits;
    int64_t at = 0;
    for (size_t i = 0; i < pieces.size(); ++i) {
      logits.push_back(path->forward(toks.narrow(1, at, pieces[i]), cache).logits);
      at += pieces[i];
      if (i == 0 && inject) cache.inject(layer, d);
    }
    return torch::cat(logits, 1);  // [B, T, V]
  };
  Mamba2Cache together = path->new_cache(batch);
  const torch::Tensor all = play(together, tokens, delta);
  const double tol = kind == PathKind::kReference ? 0.0 : float32_tolerance(ck, tokens, pieces);
  for (int64_t row = 0; row < batch; ++row) {
    Mamba2Cache alone = path->new_cache(1);
    const torch::Tensor d = broadcast ? delta : delta.narrow(0, row, 1);
    const torch::Tensor one = play(alone, tokens.narrow(0, row, 1), d);
    auto agree = [&](const torch::Tensor& x, const torch::Tensor& y) {
      return tol == 0.0 ? bytes_equal(x, y) : rel_err(x, y) <= tol;
    };
    PROP_ASSERT(agree(one, all.narrow(0, row, 1)),
                path_kind_name(kind) << ": row " << row << " of " << batch << ": logits differ from the row alone (rel err "
                                     << rel_err(one, all.narrow(0, row, 1)) << ")");
    for (size_t l = 0; l < alone.ssm_states.size(); ++l) {
      PROP_ASSERT(agree(alone.ssm_states[l], together.ssm_states[l].narrow(0, row, 1)) &&
                      agree(alone.conv_states[l], together.conv_states[l].narrow(0, row, 1)),
                  path_kind_name(kind) << ": row " << row << ": layer " << l << "'s states differ from the row alone");
    }
  }
}

// ---------------------------------------------------------------------------------------------
// One decode step is affine in the state: with y(s) the output of selective_state_update from
// state s, y(s + Δ) - y(s) = C · (exp(Δt·A) Δ) (head h reading group h / (H/G)) and the new
// state moves by exp(Δt·A) Δ. Float64; the expectation is computed with plain loops here.
RC_GTEST_PROP(PathProperty, OneStepIsAffineInTheState, (const ModelSpec& spec)) {
  RC_TAG(spec.family);
  const int64_t B = *rc::gen::inRange<int64_t>(1, 4);
  const int64_t H = spec.num_heads, P = spec.head_dim, G = spec.n_groups, N = spec.state_size;
  const double scale = *rc::gen::element(1e-3, 1.0, 1e3);
  const uint32_t seed = *rc::gen::arbitrary<uint32_t>();

  at::Generator gen = torch_generator(seed);
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const torch::Tensor x = torch::randn({B, H, P}, gen, f64);
  const torch::Tensor dt = (torch::rand({B, H}, gen, f64) * (std::log(spec.dt_max) - std::log(spec.dt_min)) +
                            std::log(spec.dt_min)).exp();  // [B, H]
  const torch::Tensor A = -(torch::rand({H}, gen, f64) * (spec.a_log_max - spec.a_log_min) + spec.a_log_min).exp();
  const torch::Tensor Bm = torch::randn({B, G, N}, gen, f64), Cm = torch::randn({B, G, N}, gen, f64);
  const torch::Tensor D = torch::randn({H}, gen, f64);
  const torch::Tensor s = torch::randn({B, H, P, N}, gen, f64);
  const torch::Tensor delta = torch::randn({B, H, P, N}, gen, f64) * scale;

  const auto [y0, n0] = aten_ops::selective_state_update(x, dt, A, Bm, Cm, D, s);
  const auto [y1, n1] = aten_ops::selective_state_update(x, dt, A, Bm, Cm, D, s + delta);

  // want_y[b, h, p] = sum_n C[b, h / (H/G), n] exp(dt[b, h] A[h]) Δ[b, h, p, n];
  // mag[b, h, p] = sum_n |C| (|n0| + |n1| + decay (|s| + |Δ|)) + |D x|: the size of what was
  // summed (s + Δ itself is rounded before it decays), for the bound.
  torch::Tensor want_y = torch::zeros({B, H, P}, f64), want_s = torch::zeros({B, H, P, N}, f64);
  torch::Tensor mag = torch::zeros({B, H, P}, f64);
  auto xa = x.accessor<double, 3>(), ya = want_y.accessor<double, 3>(), ma = mag.accessor<double, 3>();
  auto dta = dt.accessor<double, 2>();
  auto Aa = A.accessor<double, 1>(), Da = D.accessor<double, 1>();
  auto Ca = Cm.accessor<double, 3>();
  auto da = delta.accessor<double, 4>(), wa = want_s.accessor<double, 4>();
  auto n0a = n0.accessor<double, 4>(), n1a = n1.accessor<double, 4>(), sa = s.accessor<double, 4>();
  torch::Tensor decayed = torch::zeros({B, H, P, N}, f64);  // decay (|s| + |Δ|)
  auto dca = decayed.accessor<double, 4>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / (H / G);
      const double decay = std::exp(dta[b][h] * Aa[h]);
      for (int64_t p = 0; p < P; ++p) {
        double acc = 0, m = std::abs(Da[h] * xa[b][h][p]);
        for (int64_t k = 0; k < N; ++k) {
          wa[b][h][p][k] = decay * da[b][h][p][k];
          acc += Ca[b][g][k] * wa[b][h][p][k];
          dca[b][h][p][k] = decay * (std::abs(sa[b][h][p][k]) + std::abs(da[b][h][p][k]));
          m += std::abs(Ca[b][g][k]) * (std::abs(n0a[b][h][p][k]) + std::abs(n1a[b][h][p][k]) + dca[b][h][p][k]);
        }
        ya[b][h][p] = acc;
        ma[b][h][p] = m;
      }
    }
  // Each of y0, y1 carries <= (N + 2) eps of its magnitude in rounding (a dot product of N terms,
  // the D term, the state update); 4x for slack.
  const double eps = std::numeric_limits<double>::epsilon();
  const torch::Tensor y_err = ((y1 - y0) - want_y).abs() - 4.0 * (N + 2) * eps * mag;
  PROP_ASSERT(y_err.max().item<double>() <= 0.0,
              "y(s + delta) - y(s) != C . (exp(dt A) delta): worst excess " << y_err.max().item<double>()
                                                                          << " over the rounding bound");
  const torch::Tensor s_err = ((n1 - n0) - want_s).abs() - 4.0 * eps * (n0.abs() + n1.abs() + decayed);
  PROP_ASSERT(s_err.max().item<double>() <= 0.0,
              "new_state(s + delta) - new_state(s) != exp(dt A) delta: worst excess " << s_err.max().item<double>());

  // At model level (reference path): an injection into layer l, then a step, leaves the residual
  // stream below layer l bitwise as it was; it cannot reach back.
  const auto ck = make_checkpoint(spec);
  auto path = build_path(PathKind::kReference, ck);
  const int64_t layer = *rc::gen::inRange<int64_t>(0, spec.num_layers);
  const torch::Tensor tokens = random_tokens(B, 3, ck.config.vocab_size, seed);
  Mamba2Cache control = path->new_cache(B), injected = path->new_cache(B);
  path->forward(tokens.narrow(1, 0, 2), control);
  path->forward(tokens.narrow(1, 0, 2), injected);
  injected.inject(layer, random_delta(ck.config, B, false, scale, seed));
  const ForwardOutput a = path->forward(tokens.narrow(1, 2, 1), control);
  const ForwardOutput b = path->forward(tokens.narrow(1, 2, 1), injected);
  for (int64_t l = 0; l < layer; ++l) {
    PROP_ASSERT(bytes_equal(a.layer_outputs[static_cast<size_t>(l)], b.layer_outputs[static_cast<size_t>(l)]),
                "an injection into layer " << layer << " changed the output of layer " << l);
  }
}

// ---------------------------------------------------------------------------------------------
// The same path on the same inputs twice (two instances, two caches) is bitwise identical:
// logits, per-layer outputs, dispatch traces and every cache after every op.
RC_GTEST_PROP(PathProperty, Determinism, (const ModelSpec& spec)) {
  RC_TAG(spec.family);
  const PathKind kind = *rc::gen::element(PathKind::kReference, PathKind::kChunked32, PathKind::kChunked64,
                                          PathKind::kPlain32);
  const int64_t batch = *rc::gen::inRange<int64_t>(1, 4);
  const auto ops = *gen_script(spec, 6);

  const auto ck = make_checkpoint(spec);
  const Scenario scenario = to_scenario(ops, ck.config, batch);
  auto first = build_path(kind, ck), second = build_path(kind, ck);
  const ScenarioResult ra = run_scenario(scenario, *first), rb = run_scenario(scenario, *second);
  for (size_t i = 0; i < ops.size(); ++i) {
    const OpResult &a = ra.ops[i], &b = rb.ops[i];
    if (a.kind == OpKind::kForward) {
      PROP_ASSERT(bytes_equal(a.logits, b.logits), path_kind_name(kind) << ": op " << i << ": logits differ between runs");
      PROP_ASSERT(a.trace == b.trace, path_kind_name(kind) << ": op " << i << ": traces differ between runs");
      for (size_t l = 0; l < a.layer_outputs.size(); ++l) {
        PROP_ASSERT(bytes_equal(a.layer_outputs[l], b.layer_outputs[l]),
                    path_kind_name(kind) << ": op " << i << ": layer " << l << " output differs between runs");
      }
    }
    for (size_t l = 0; l < a.cache.ssm_states.size(); ++l) {
      PROP_ASSERT(bytes_equal(a.cache.ssm_states[l], b.cache.ssm_states[l]) &&
                      bytes_equal(a.cache.conv_states[l], b.cache.conv_states[l]),
                  path_kind_name(kind) << ": op " << i << ": layer " << l << "'s cache differs between runs");
    }
  }
}

// SPEC §3: every path given the same op script produces the same dispatch trace, the one the
// dispatch rule implies (prefill on an empty cache, step for T == 1, continue otherwise).
RC_GTEST_PROP(PathProperty, DispatchParity, (const ModelSpec& spec)) {
  RC_TAG(spec.family);
  const int64_t batch = *rc::gen::inRange<int64_t>(1, 3);
  const auto ops = *gen_script(spec, 8);

  const auto ck = make_checkpoint(spec);
  const Scenario scenario = to_scenario(ops, ck.config, batch);
  const auto want = expected_traces(ops, spec.num_layers);
  std::vector<std::pair<std::string, std::unique_ptr<ExecutionPath>>> paths;
  for (const auto& name : registered_paths()) {
    if (path_available(name, torch::kFloat32)) paths.emplace_back(name, make_path(name, ck, torch::kFloat32));
  }
  paths.emplace_back("chunked (chunk_size 1)", std::make_unique<ChunkedPath>(ck, torch::kFloat32, torch::kCPU, 1));
  for (auto& [name, path] : paths) {
    const ScenarioResult r = run_scenario(scenario, *path);
    for (size_t i = 0; i < ops.size(); ++i) {
      PROP_ASSERT(r.ops[i].trace == want[i], name << ": op " << i << " (" << op_kind_name(ops[i].kind) << "): trace "
                                                  << trace_string(r.ops[i].trace) << ", expected " << trace_string(want[i]));
    }
  }
}

}  // namespace
}  // namespace mambadiff::props
