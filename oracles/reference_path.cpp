#include "oracles/reference_path.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace mambadiff {

namespace {

template <typename S>
const S* ptr(const torch::Tensor& t) {
  return t.defined() ? data<S>(t) : nullptr;
}

// What an instance computes in: sums, norms, the scan and its state. float64 and float32 compute in
// themselves (every operation rounded to that type, the accumulators too); bfloat16 computes in
// float32 and stores in bfloat16, as every real bf16 kernel does (tensor-core matmuls accumulate in
// fp32 and round the output once; norms reduce in fp32; mamba_ssm keeps the SSM state in fp32);
// float16 the same way.
template <typename S> struct Arithmetic { using Acc = S; };
template <> struct Arithmetic<c10::BFloat16> { using Acc = float; };
template <> struct Arithmetic<c10::Half> { using Acc = float; };
template <> struct Arithmetic<sr::StochasticBFloat16> { using Acc = sr::StochasticFloat32; };
template <> struct Arithmetic<sr::StochasticFloat16> { using Acc = sr::StochasticFloat32; };

// "plain-<dtype>": the baselines' names (harness/path_registry.h).
constexpr const char* plain_name(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat32: return "plain-float32";
    case torch::kBFloat16: return "plain-bfloat16";
    case torch::kFloat16: return "plain-float16";
    default: return "plain-?";
  }
}

// A value computed in Acc, stored as an activation of dtype S and read back (identity when S == Acc).
template <typename S, typename Acc> Acc store(Acc v) { return static_cast<Acc>(S(v)); }

// Transcendentals are evaluated in double and rounded once to A (the best an A library gives).
template <typename A> A s_exp(A v) { return A(std::exp(static_cast<double>(v))); }
template <typename A> A s_sqrt(A v) { return A(std::sqrt(static_cast<double>(v))); }
template <typename A> A s_silu(A v) { return A(static_cast<double>(v) / (1.0 + std::exp(-static_cast<double>(v)))); }
// torch.nn.functional.softplus with its default threshold 20 (linear above), as HF uses.
template <typename A> A s_softplus(A v) {
  const double d = static_cast<double>(v);
  return A(d > 20.0 ? d : std::log1p(std::exp(d)));
}

// acc + a * b: for the hardware types as written (two roundings, the oracle's and the plain loops'
// arithmetic since they were written); for sr::Rounded one rounding, a fused multiply-add
// (sr::multiply_add) -- half the random draws in the loops' hottest line.
template <typename A>
A multiply_add(A acc, A a, A b) {
  return acc + a * b;
}

// out[o] = store(sum_i W[o, i] * in[i] + bias[o])   (W row-major [rows, cols]; summed in A)
template <typename S, typename A>
void matvec(const A* W, const A* bias, const A* in, int64_t rows, int64_t cols, A* out) {
  // Four rows at a time, each summed in its own order as one row alone would be (the results are
  // those of the row-by-row loop): the four sums are independent chains, so a stochastically
  // rounded sum -- a chain of float64 add, bit rounding and random draw -- overlaps with the others
  // (measured: `check` 11.5 s -> 9.3 s with the four stochastic runs).
  constexpr int64_t kRows = 4;
  int64_t o = 0;
  for (; o + kRows <= rows; o += kRows) {
    A acc[kRows];
    for (int64_t r = 0; r < kRows; ++r) acc[r] = bias ? bias[o + r] : A(0);
    for (int64_t i = 0; i < cols; ++i)
      for (int64_t r = 0; r < kRows; ++r) acc[r] = multiply_add(acc[r], W[(o + r) * cols + i], in[i]);
    for (int64_t r = 0; r < kRows; ++r) out[o + r] = store<S>(acc[r]);
  }
  for (; o < rows; ++o) {
    A acc = bias ? bias[o] : A(0);
    const A* row = W + o * cols;
    for (int64_t i = 0; i < cols; ++i) acc = multiply_add(acc, row[i], in[i]);
    out[o] = store<S>(acc);
  }
}

// out = weight * in / sqrt(mean(in^2) + eps) over `n` values (in and out may alias), reduced in A;
// the normalized value is stored, then scaled by the (stored) weight and stored again, as
// `weight * normed.to(weight.dtype)` does.
template <typename S, typename A>
void rmsnorm(const A* in, const A* weight, int64_t n, double eps, A* out) {
  A ss(0);
  for (int64_t i = 0; i < n; ++i) ss = ss + in[i] * in[i];
  const A scale = A(1) / s_sqrt(A(ss / A(static_cast<float>(n)) + A(eps)));
  for (int64_t i = 0; i < n; ++i) out[i] = store<S>(weight[i] * store<S>(in[i] * scale));
}

// One token of the SSM recurrence for one batch row, computed in A; y stored as an activation of
// dtype S (the state stays in A, as real kernels keep it in fp32).
template <typename S, typename A>
void token_step(const SsmShape& shape, const A* xs, const A* Bv, const A* Cv, const A* dt_raw, const A* dt_bias,
                const A* A_log, const A* D, A* state, A* y) {
  const int64_t H = shape.heads, P = shape.head_dim, N = shape.state_size, hpg = shape.heads / shape.groups;
  for (int64_t hh = 0; hh < H; ++hh) {
    const int64_t g = hh / hpg;  // head hh reads group hh / (H/G)
    const A dt = A(std::clamp(static_cast<double>(s_softplus(A(dt_raw[hh] + dt_bias[hh]))), shape.time_step_min,
                              shape.time_step_max));
    const A Ah = A(-std::exp(static_cast<double>(A_log[hh])));
    const A decay = s_exp(A(dt * Ah));
    for (int64_t p = 0; p < P; ++p) {
      A* s = state + (hh * P + p) * N;
      const A xv = xs[hh * P + p];
      A acc(0);
      for (int64_t n = 0; n < N; ++n) {
        s[n] = decay * s[n] + dt * xv * Bv[g * N + n];
        acc = acc + Cv[g * N + n] * s[n];
      }
      y[hh * P + p] = store<S>(acc + D[hh] * xv);
    }
  }
}

}  // namespace

template <typename S>
void ssm_token_step(const SsmShape& shape, const S* xs, const S* Bv, const S* Cv, const S* dt_raw,
                    const S* dt_bias, const S* A_log, const S* D, S* state, S* y) {
  token_step<S, S>(shape, xs, Bv, Cv, dt_raw, dt_bias, A_log, D, state, y);
}

template <typename S>
SequentialScanPath<S>::SequentialScanPath(const Mamba2Checkpoint& ck, uint64_t rounding_seed)
    : ExecutionPath(ck.config, kDtype<S>, torch::kCPU),
      // The weights as stored in S (Mamba2Weights::to keeps dt_bias, A_log and D in fp32 below
      // fp64, as every implementation does), held in Acc for the loops.
      w_(ck.weights.to(kDtype<S>, torch::kCPU).to(kStorage<typename Arithmetic<S>::Acc>, torch::kCPU)),
      rounding_seed_(rounding_seed) {}

template <typename S>
std::string SequentialScanPath<S>::name() const {
  if constexpr (std::is_same_v<S, double>) return "reference";
  if constexpr (!HeldInFloat64<S>::value) return plain_name(kDtype<S>);
  return fmt::format("{}-stochastic-{}", plain_name(kDtype<S>), rounding_seed_);
}

template <typename S>
Mamba2Cache SequentialScanPath<S>::new_cache(int64_t batch_size) const {
  // The conv window holds stored (S) inputs; the SSM state is kept in Acc.
  return Mamba2Cache(config_, batch_size, kStorage<S>, kStorage<typename Arithmetic<S>::Acc>, torch::kCPU);
}

template <typename S>
ForwardOutput SequentialScanPath<S>::run(const torch::Tensor& tokens, Mamba2Cache& cache, Branch branch) {
  using A = typename Arithmetic<S>::Acc;
  const sr::RoundingSeed rounding(rounding_seed_);  // this path's random rounding, if it has any
  const auto& c = config_;
  const int64_t Bsz = tokens.size(0), T = tokens.size(1), Dm = c.hidden_size, V = c.vocab_size,
                H = c.num_heads, P = c.head_dim, G = c.n_groups, N = c.state_size, I = c.d_inner(),
                Cd = c.conv_dim(), K = c.conv_kernel, gsize = c.gated_norm_group_size();
  const double eps = c.layer_norm_epsilon;
  const int64_t* ids = tokens.data_ptr<int64_t>();
  // The residual stream stays in Acc when the config says residual_in_fp32 (as the chunked path and
  // HF do), else it is stored in S after every addition.
  const bool residual_in_acc = c.residual_in_fp32;
  auto residual = [&](A v) { return residual_in_acc ? v : store<S>(v); };

  // x: the residual stream [B, T, D]
  std::vector<A> x(static_cast<size_t>(Bsz * T * Dm));
  for (int64_t b = 0; b < Bsz; ++b)
    for (int64_t t = 0; t < T; ++t)
      std::copy_n(ptr<A>(w_.embeddings) + ids[b * T + t] * Dm, Dm, x.data() + (b * T + t) * Dm);

  ForwardOutput out;
  std::vector<A> xin(Dm), h(Dm), proj(c.in_proj_dim()), xbc(Cd), y(I), z(I), o(Dm);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& lw = w_.layers[static_cast<size_t>(l)];
    torch::Tensor& conv_t = cache.conv_states[static_cast<size_t>(l)];  // [B, C, K]
    torch::Tensor& ssm_t = cache.ssm_states[static_cast<size_t>(l)];    // [B, H, P, N]
    if (branch == Branch::kPrefill) {  // prefill: zero history, zero state
      conv_t.zero_();
      ssm_t.zero_();
    }
    S* window = data<S>(conv_t);
    A* state = data<A>(ssm_t);
    const A* conv_w = ptr<A>(lw.conv1d_weight);  // [C, K]
    const A* conv_b = ptr<A>(lw.conv1d_bias);
    for (int64_t b = 0; b < Bsz; ++b) {
      for (int64_t t = 0; t < T; ++t) {
        A* xt = x.data() + (b * T + t) * Dm;
        // The block's norm reads the residual as an activation (HF: hidden_states.to(norm dtype)).
        for (int64_t d = 0; d < Dm; ++d) xin[d] = store<S>(xt[d]);
        rmsnorm<S>(xin.data(), ptr<A>(lw.norm_weight), Dm, eps, h.data());
        matvec<S>(ptr<A>(lw.in_proj_weight), ptr<A>(lw.in_proj_bias), h.data(), c.in_proj_dim(), Dm, proj.data());
        const A* gate = proj.data();              // [I]
        const A* xbc_raw = proj.data() + I;       // [C]
        const A* dt_raw = proj.data() + I + Cd;   // [H]
        // Causal conv: shift the window left by one, append this token's input, dot with the kernel.
        for (int64_t ch = 0; ch < Cd; ++ch) {
          S* win = window + (b * Cd + ch) * K;
          std::copy(win + 1, win + K, win);
          win[K - 1] = S(xbc_raw[ch]);  // exact: xbc_raw is already stored in S
          A acc = conv_b ? conv_b[ch] : A(0);
          for (int64_t k = 0; k < K; ++k) acc = acc + conv_w[ch * K + k] * static_cast<A>(win[k]);
          xbc[ch] = store<S>(s_silu(acc));
        }
        const A* xs = xbc.data();              // [H, P]
        const A* Bv = xbc.data() + I;          // [G, N]
        const A* Cv = xbc.data() + I + G * N;  // [G, N]
        token_step<S, A>({H, P, N, G, c.time_step_min, c.time_step_max}, xs, Bv, Cv, dt_raw, ptr<A>(lw.dt_bias),
                         ptr<A>(lw.A_log), ptr<A>(lw.D), state + b * H * P * N, y.data());
        // Gated RMSNorm over groups of `gsize` channels (gsize == I: the HF, ungrouped form).
        for (int64_t i = 0; i < I; ++i) z[i] = y[i] * s_silu(gate[i]);
        for (int64_t g0 = 0; g0 < I; g0 += gsize) {
          rmsnorm<S>(z.data() + g0, ptr<A>(lw.gated_norm_weight) + g0, gsize, eps, z.data() + g0);
        }
        matvec<S>(ptr<A>(lw.out_proj_weight), ptr<A>(lw.out_proj_bias), z.data(), Dm, I, o.data());
        for (int64_t d = 0; d < Dm; ++d) xt[d] = residual(xt[d] + o[d]);
      }
    }
    out.layer_outputs.push_back(torch::from_blob(x.data(), {Bsz, T, Dm}, kStorage<A>)
                                    .to(residual_in_acc ? kStorage<A> : kStorage<S>, /*non_blocking=*/false,
                                        /*copy=*/true));
    out.trace.push_back({l, branch, logical_kernels(branch)});
  }
  std::vector<A> logits(static_cast<size_t>(Bsz * T * V));
  for (int64_t bt = 0; bt < Bsz * T; ++bt) {
    rmsnorm<S>(x.data() + bt * Dm, ptr<A>(w_.norm_f_weight), Dm, eps, h.data());
    matvec<S>(ptr<A>(w_.lm_head), static_cast<const A*>(nullptr), h.data(), V, Dm, logits.data() + bt * V);
  }
  // Every logit is stored in S already: the conversion is exact.
  out.logits = torch::from_blob(logits.data(), {Bsz, T, V}, kStorage<A>).to(kStorage<S>, false, /*copy=*/true);
  return out;
}

#define MAMBADIFF_SSM_TOKEN_STEP(S)                                                                          \
  template void ssm_token_step<S>(const SsmShape&, const S*, const S*, const S*, const S*, const S*, const S*, \
                                  const S*, S*, S*);
MAMBADIFF_SSM_TOKEN_STEP(double)
MAMBADIFF_SSM_TOKEN_STEP(float)
MAMBADIFF_SSM_TOKEN_STEP(c10::BFloat16)
MAMBADIFF_SSM_TOKEN_STEP(sr::StochasticFloat32)
#undef MAMBADIFF_SSM_TOKEN_STEP

template class SequentialScanPath<double>;
template class SequentialScanPath<float>;
template class SequentialScanPath<c10::BFloat16>;
template class SequentialScanPath<c10::Half>;
template class SequentialScanPath<sr::StochasticFloat32>;
template class SequentialScanPath<sr::StochasticBFloat16>;
template class SequentialScanPath<sr::StochasticFloat16>;

}  // namespace mambadiff
