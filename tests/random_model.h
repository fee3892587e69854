// A random Mamba2 model built in memory (no files): ModelSpec describes it, make_checkpoint draws
// its weights from a seed. Shared by the RapidCheck property tests (tests/property_support.h) and
// the fuzz targets (fuzz/), which must build the same models; it needs only LibTorch.
#pragma once

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "engine/checkpoint.h"
#include "engine/config.h"

namespace mambadiff::props {

// The random model.
struct ModelSpec {
  std::string family;  // "scaled-real" (the real table shrunk) or "edge"
  int64_t vocab_size = 16;
  int64_t hidden_size = 8;
  int64_t num_layers = 1;
  int64_t num_heads = 1;  // H
  int64_t head_dim = 8;   // P
  int64_t n_groups = 1;   // G
  int64_t state_size = 1; // N
  int64_t expand = 1;
  int64_t conv_kernel = 4;  // K
  int64_t chunk_size = 4;   // Q
  double a_log_min = 0, a_log_max = 0;  // A_log uniform per head in [min, max] (A = -exp(A_log))
  double dt_min = 1e-3, dt_max = 0.1;   // softplus(dt_bias) log-uniform per head in [min, max]
  double time_step_min = 0.0, time_step_max = std::numeric_limits<double>::infinity();
  bool use_bias = false;
  bool use_conv_bias = true;
  bool tie_embeddings = false;
  bool grouped_norm = false;
  bool residual_in_fp32 = true;
  uint32_t seed = 0;  // of every weight

  Mamba2Config config() const {
    Mamba2Config c;
    c.vocab_size = vocab_size;
    c.hidden_size = hidden_size;
    c.num_hidden_layers = num_layers;
    c.state_size = state_size;
    c.expand = expand;
    c.head_dim = head_dim;
    c.num_heads = num_heads;
    c.n_groups = n_groups;
    c.chunk_size = chunk_size;
    c.conv_kernel = conv_kernel;
    c.time_step_min = time_step_min;
    c.time_step_max = time_step_max;
    c.residual_in_fp32 = residual_in_fp32;
    c.use_bias = use_bias;
    c.use_conv_bias = use_conv_bias;
    c.tie_word_embeddings = tie_embeddings;
    c.gated_norm = grouped_norm ? GatedNormGrouping::kGrouped : GatedNormGrouping::kUngrouped;
    return c;
  }
};

inline std::vector<int64_t> divisors(int64_t n) {
  std::vector<int64_t> d;
  for (int64_t k = 1; k <= n; ++k)
    if (n % k == 0) d.push_back(k);
  return d;
}

inline at::Generator torch_generator(uint64_t seed) { return at::detail::createCPUGenerator(seed); }

// How make_checkpoint fills the weights: drawn from the spec's seed, or zeros of the same shapes
// (no draws) for a caller that sets the few weights it reads itself -- the fuzz target scan_diff
// calls only the scan kernels, which read A_log, dt_bias and D, and drawing the rest was 13 % of
// its time per input.
enum class WeightFill { kRandom, kZeros };

// The weights of `spec`, fp32 on the CPU like a checkpoint read from disk. Scales keep every
// activation O(1): projections N(0, 1/fan_in), norm weights 1 + N(0, 0.1^2); the dt rows of
// in_proj are scaled by 0.1 so dt stays near softplus(dt_bias), the range the spec asks for.
inline Mamba2Checkpoint make_checkpoint(const ModelSpec& s, WeightFill fill = WeightFill::kRandom) {
  Mamba2Checkpoint ck;
  ck.config = s.config();
  ck.config.validate("generated model");
  ck.directory = "<in-memory>";
  ck.hash = "rapidcheck-" + std::to_string(s.seed);
  const bool zeros = fill == WeightFill::kZeros;
  at::Generator gen = zeros ? at::Generator() : torch_generator(s.seed);
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  auto randn = [&](std::vector<int64_t> shape, double scale) {
    return zeros ? torch::zeros(shape, f32) : torch::randn(shape, gen, f32) * scale;
  };
  auto uniform = [&](std::vector<int64_t> shape, double lo, double hi) {
    return zeros ? torch::zeros(shape, f32) : torch::rand(shape, gen, f32) * (hi - lo) + lo;
  };
  const Mamba2Config& c = ck.config;
  const int64_t D = c.hidden_size, I = c.d_inner(), H = c.num_heads, C = c.conv_dim(), K = c.conv_kernel;
  auto& w = ck.weights;
  w.embeddings = randn({c.vocab_size, D}, 1.0);  // [V, D]
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LayerWeights lw;
    lw.norm_weight = 1.0 + randn({D}, 0.1);                                    // [D]
    lw.in_proj_weight = randn({c.in_proj_dim(), D}, 1.0 / std::sqrt(double(D)));  // [I + C + H, D]
    lw.in_proj_weight.narrow(0, I + C, H).mul_(0.1);
    if (c.use_bias) lw.in_proj_bias = randn({c.in_proj_dim()}, 0.1);
    lw.conv1d_weight = randn({C, K}, 1.0 / std::sqrt(double(K)));  // [C, K]
    if (c.use_conv_bias) lw.conv1d_bias = randn({C}, 0.1);
    // dt_bias = softplus^-1(dt0), dt0 log-uniform in [dt_min, dt_max]; softplus^-1(y) = y + log(-expm1(-y)).
    const torch::Tensor log_dt = uniform({H}, std::log(s.dt_min), std::log(s.dt_max)).to(torch::kFloat64);
    const torch::Tensor dt0 = log_dt.exp();
    lw.dt_bias = (dt0 + (-(-dt0).expm1()).log()).to(torch::kFloat32);  // [H]
    lw.A_log = uniform({H}, s.a_log_min, s.a_log_max);                // [H]
    lw.D = randn({H}, 1.0);                                            // [H]
    lw.gated_norm_weight = 1.0 + randn({I}, 0.1);                      // [I]
    lw.out_proj_weight = randn({D, I}, 1.0 / std::sqrt(double(I)));     // [D, I]
    if (c.use_bias) lw.out_proj_bias = randn({D}, 0.1);
    w.layers.push_back(std::move(lw));
  }
  w.norm_f_weight = 1.0 + randn({D}, 0.1);
  w.lm_head = c.tie_word_embeddings ? w.embeddings : randn({c.vocab_size, D}, 1.0 / std::sqrt(double(D)));
  return ck;
}

}  // namespace mambadiff::props
