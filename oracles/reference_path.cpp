#include "oracles/reference_path.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace mambadiff {

namespace {

template <typename S>
const S* ptr(const torch::Tensor& t) {
  return t.defined() ? t.data_ptr<S>() : nullptr;
}

// Transcendentals are evaluated in double and rounded once to S (the best an S library gives).
template <typename S> S s_exp(S v) { return S(std::exp(static_cast<double>(v))); }
template <typename S> S s_sqrt(S v) { return S(std::sqrt(static_cast<double>(v))); }
template <typename S> S s_silu(S v) { return S(static_cast<double>(v) / (1.0 + std::exp(-static_cast<double>(v)))); }
// torch.nn.functional.softplus with its default threshold 20 (linear above), as HF uses.
template <typename S> S s_softplus(S v) {
  const double d = static_cast<double>(v);
  return S(d > 20.0 ? d : std::log1p(std::exp(d)));
}

// out[o] = sum_i W[o, i] * in[i] + bias[o]   (W row-major [rows, cols])
template <typename S>
void matvec(const S* W, const S* bias, const S* in, int64_t rows, int64_t cols, S* out) {
  for (int64_t o = 0; o < rows; ++o) {
    S acc = bias ? bias[o] : S(0);
    const S* row = W + o * cols;
    for (int64_t i = 0; i < cols; ++i) acc = acc + row[i] * in[i];
    out[o] = acc;
  }
}

// out = weight * in / sqrt(mean(in^2) + eps) over `n` values (in and out may alias)
template <typename S>
void rmsnorm(const S* in, const S* weight, int64_t n, double eps, S* out) {
  S ss(0);
  for (int64_t i = 0; i < n; ++i) ss = ss + in[i] * in[i];
  const S scale = S(1) / s_sqrt(S(ss / S(static_cast<float>(n)) + S(eps)));
  for (int64_t i = 0; i < n; ++i) out[i] = weight[i] * (in[i] * scale);
}

template <typename S> constexpr torch::ScalarType kDtype = torch::kFloat64;
template <> constexpr torch::ScalarType kDtype<float> = torch::kFloat32;
template <> constexpr torch::ScalarType kDtype<c10::BFloat16> = torch::kBFloat16;

}  // namespace

template <typename S>
void ssm_token_step(const SsmShape& shape, const S* xs, const S* Bv, const S* Cv, const S* dt_raw,
                    const S* dt_bias, const S* A_log, const S* D, S* state, S* y) {
  const int64_t H = shape.heads, P = shape.head_dim, N = shape.state_size, hpg = shape.heads / shape.groups;
  for (int64_t hh = 0; hh < H; ++hh) {
    const int64_t g = hh / hpg;  // head hh reads group hh / (H/G)
    const S dt = S(std::clamp(static_cast<double>(s_softplus(S(dt_raw[hh] + dt_bias[hh]))), shape.time_step_min,
                              shape.time_step_max));
    const S A = S(-std::exp(static_cast<double>(A_log[hh])));
    const S decay = s_exp(S(dt * A));
    for (int64_t p = 0; p < P; ++p) {
      S* s = state + (hh * P + p) * N;
      const S xv = xs[hh * P + p];
      S acc(0);
      for (int64_t n = 0; n < N; ++n) {
        s[n] = decay * s[n] + dt * xv * Bv[g * N + n];
        acc = acc + Cv[g * N + n] * s[n];
      }
      y[hh * P + p] = acc + D[hh] * xv;
    }
  }
}

template <typename S>
SequentialScanPath<S>::SequentialScanPath(const Mamba2Checkpoint& ck)
    : ExecutionPath(ck.config, kDtype<S>, torch::kCPU), w_(ck.weights.to(kDtype<S>, torch::kCPU)) {
  // Mamba2Weights::to keeps dt_bias, A_log and D in fp32 below fp64; the plain loops want S.
  for (auto& l : w_.layers) {
    l.dt_bias = l.dt_bias.to(kDtype<S>);
    l.A_log = l.A_log.to(kDtype<S>);
    l.D = l.D.to(kDtype<S>);
  }
}

template <typename S>
std::string SequentialScanPath<S>::name() const {
  if constexpr (std::is_same_v<S, double>) return "reference";
  if constexpr (std::is_same_v<S, float>) return "plain-float32";
  return "plain-bfloat16";
}

template <typename S>
Mamba2Cache SequentialScanPath<S>::new_cache(int64_t batch_size) const {
  return Mamba2Cache(config_, batch_size, kDtype<S>, kDtype<S>, torch::kCPU);
}

template <typename S>
ForwardOutput SequentialScanPath<S>::run(const torch::Tensor& tokens, Mamba2Cache& cache, Branch branch) {
  const auto& c = config_;
  const int64_t Bsz = tokens.size(0), T = tokens.size(1), Dm = c.hidden_size, V = c.vocab_size,
                H = c.num_heads, P = c.head_dim, G = c.n_groups, N = c.state_size, I = c.d_inner(),
                Cd = c.conv_dim(), K = c.conv_kernel, gsize = c.gated_norm_group_size();
  const double eps = c.layer_norm_epsilon;
  const int64_t* ids = tokens.data_ptr<int64_t>();

  // x: the residual stream [B, T, D]
  std::vector<S> x(static_cast<size_t>(Bsz * T * Dm));
  for (int64_t b = 0; b < Bsz; ++b)
    for (int64_t t = 0; t < T; ++t)
      std::copy_n(ptr<S>(w_.embeddings) + ids[b * T + t] * Dm, Dm, x.data() + (b * T + t) * Dm);

  ForwardOutput out;
  std::vector<S> h(Dm), proj(c.in_proj_dim()), xbc(Cd), y(I), z(I), o(Dm);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& lw = w_.layers[static_cast<size_t>(l)];
    torch::Tensor& conv_t = cache.conv_states[static_cast<size_t>(l)];  // [B, C, K]
    torch::Tensor& ssm_t = cache.ssm_states[static_cast<size_t>(l)];    // [B, H, P, N]
    if (branch == Branch::kPrefill) {  // prefill: zero history, zero state
      conv_t.zero_();
      ssm_t.zero_();
    }
    S* window = conv_t.data_ptr<S>();
    S* state = ssm_t.data_ptr<S>();
    const S* conv_w = ptr<S>(lw.conv1d_weight);  // [C, K]
    const S* conv_b = ptr<S>(lw.conv1d_bias);
    for (int64_t b = 0; b < Bsz; ++b) {
      for (int64_t t = 0; t < T; ++t) {
        S* xt = x.data() + (b * T + t) * Dm;
        rmsnorm(xt, ptr<S>(lw.norm_weight), Dm, eps, h.data());
        matvec(ptr<S>(lw.in_proj_weight), ptr<S>(lw.in_proj_bias), h.data(), c.in_proj_dim(), Dm, proj.data());
        const S* gate = proj.data();              // [I]
        const S* xbc_raw = proj.data() + I;       // [C]
        const S* dt_raw = proj.data() + I + Cd;   // [H]
        // Causal conv: shift the window left by one, append this token's input, dot with the kernel.
        for (int64_t ch = 0; ch < Cd; ++ch) {
          S* win = window + (b * Cd + ch) * K;
          std::copy(win + 1, win + K, win);
          win[K - 1] = xbc_raw[ch];
          S acc = conv_b ? conv_b[ch] : S(0);
          for (int64_t k = 0; k < K; ++k) acc = acc + conv_w[ch * K + k] * win[k];
          xbc[ch] = s_silu(acc);
        }
        const S* xs = xbc.data();              // [H, P]
        const S* Bv = xbc.data() + I;          // [G, N]
        const S* Cv = xbc.data() + I + G * N;  // [G, N]
        ssm_token_step<S>({H, P, N, G, c.time_step_min, c.time_step_max}, xs, Bv, Cv, dt_raw, ptr<S>(lw.dt_bias),
                          ptr<S>(lw.A_log), ptr<S>(lw.D), state + b * H * P * N, y.data());
        // Gated RMSNorm over groups of `gsize` channels (gsize == I: the HF, ungrouped form).
        for (int64_t i = 0; i < I; ++i) z[i] = y[i] * s_silu(gate[i]);
        for (int64_t g0 = 0; g0 < I; g0 += gsize) {
          rmsnorm(z.data() + g0, ptr<S>(lw.gated_norm_weight) + g0, gsize, eps, z.data() + g0);
        }
        matvec(ptr<S>(lw.out_proj_weight), ptr<S>(lw.out_proj_bias), z.data(), Dm, I, o.data());
        for (int64_t d = 0; d < Dm; ++d) xt[d] = xt[d] + o[d];
      }
    }
    out.layer_outputs.push_back(torch::from_blob(x.data(), {Bsz, T, Dm}, kDtype<S>).clone());
    out.trace.push_back({l, branch, logical_kernels(branch)});
  }
  torch::Tensor logits = torch::empty({Bsz, T, V}, kDtype<S>);
  S* lg = logits.data_ptr<S>();
  for (int64_t bt = 0; bt < Bsz * T; ++bt) {
    rmsnorm(x.data() + bt * Dm, ptr<S>(w_.norm_f_weight), Dm, eps, h.data());
    matvec(ptr<S>(w_.lm_head), static_cast<const S*>(nullptr), h.data(), V, Dm, lg + bt * V);
  }
  out.logits = logits;
  return out;
}

#define MAMBADIFF_SSM_TOKEN_STEP(S)                                                                          \
  template void ssm_token_step<S>(const SsmShape&, const S*, const S*, const S*, const S*, const S*, const S*, \
                                  const S*, S*, S*);
MAMBADIFF_SSM_TOKEN_STEP(double)
MAMBADIFF_SSM_TOKEN_STEP(float)
MAMBADIFF_SSM_TOKEN_STEP(c10::BFloat16)
#undef MAMBADIFF_SSM_TOKEN_STEP

template class SequentialScanPath<double>;
template class SequentialScanPath<float>;
template class SequentialScanPath<c10::BFloat16>;

}  // namespace mambadiff
