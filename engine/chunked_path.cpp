#include "engine/chunked_path.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "engine/errors.h"

namespace mambadiff {

ChunkedPath::ChunkedPath(const Mamba2Checkpoint& ck, torch::ScalarType dtype, torch::Device device,
                         int64_t chunk_size)
    : ExecutionPath(ck.config, dtype, device),
      weights_(ck.weights.to(dtype, device)),
      chunk_size_(chunk_size > 0 ? chunk_size : ck.config.chunk_size) {
  if (dtype != torch::kFloat32 && dtype != torch::kBFloat16 && dtype != torch::kFloat16 &&
      dtype != torch::kFloat64) {
    throw InputError(fmt::format("chunked: unsupported dtype {}", c10::toString(dtype)));
  }
  for (const auto& l : weights_.layers) A_.push_back(-l.A_log.exp());
}

Mamba2Cache ChunkedPath::new_cache(int64_t batch_size) const {
  // The SSM state is fp32 whatever the activations (mamba_ssm's final states are fp32; a bf16
  // state degrades decode, vLLM #43301). The conv window holds pre-conv inputs in the run dtype.
  const auto state_dtype = dtype_ == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  return Mamba2Cache(config_, batch_size, dtype_, state_dtype, device_);
}

ForwardOutput ChunkedPath::run(const torch::Tensor& tokens, Mamba2Cache& cache, Branch branch) {
  ForwardOutput out;
  const torch::Tensor ids = tokens.to(device_);
  const auto residual_dtype = config_.residual_in_fp32 && dtype_ != torch::kFloat64 ? torch::kFloat32 : dtype_;
  torch::Tensor x = weights_.embeddings.index_select(0, ids.view({-1}))
                        .view({ids.size(0), ids.size(1), -1});  // [B, T, D]
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    DispatchRecord record;
    record.layer = l;
    record.branch = branch;
    record.kernels = logical_kernels(branch);
    x = layer_forward(l, x.to(residual_dtype), cache, branch, record);
    out.layer_outputs.push_back(x);
    out.trace.push_back(record);
  }
  const torch::Tensor h = rms_norm(x, weights_.norm_f_weight);
  out.logits = torch::linear(h.to(dtype_), weights_.lm_head)
                   .to(dtype_ == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32);  // [B, T, V]
  return out;
}

torch::Tensor ChunkedPath::layer_forward(int64_t l, const torch::Tensor& x, Mamba2Cache& cache, Branch branch,
                                         DispatchRecord& record) {
  const auto& c = config_;
  const int64_t Bsz = x.size(0), T = x.size(1), H = c.num_heads, P = c.head_dim, G = c.n_groups,
                N = c.state_size, I = c.d_inner();

  const torch::Tensor proj = normed_in_proj(l, x);  // [B, T, I + C + H]
  const auto parts = proj.split_with_sizes({I, c.conv_dim(), H}, -1);
  const torch::Tensor& gate = parts[0];    // [B, T, I]
  const torch::Tensor& xBC_raw = parts[1];  // [B, T, C]
  const torch::Tensor& dt_raw = parts[2];   // [B, T, H]

  torch::Tensor& window = cache.conv_states[static_cast<size_t>(l)];  // [B, C, K]
  torch::Tensor& state = cache.ssm_states[static_cast<size_t>(l)];    // [B, H, P, N]
  torch::Tensor y;  // [B, T, H, P]
  if (branch == Branch::kStep) {
    auto [y1, new_state] = decode_step(l, xBC_raw, dt_raw, window, state);
    y = y1.unsqueeze(1);
    state.copy_(new_state);  // a copy onto itself (skipped by ATen) where the step ran in place
  } else {
    // Under autograd the state read by this forward may be saved for backward; read a clone, so
    // writing the new state into the cache below does not invalidate the graph.
    const bool tracked = torch::GradMode::is_enabled() && (x.requires_grad() || state.requires_grad());
    const torch::Tensor initial = branch == Branch::kContinue ? (tracked ? state.clone() : state) : torch::Tensor();
    const torch::Tensor history = branch == Branch::kPrefill ? torch::zeros_like(window) : window;
    auto [xBC, new_window] = causal_conv1d(l, xBC_raw, history, branch);  // [B, T, C], [B, C, K]
    {
      torch::NoGradGuard no_grad;  // the cache holds values; gradients flow through the outputs
      window.copy_(new_window);
    }
    const auto xbc = xBC.split_with_sizes({I, G * N, G * N}, -1);
    const torch::Tensor dt = discretize_dt(l, dt_raw, branch);  // [B, T, H] fp32
    auto [yc, final_state] = ssd_chunk_scan(l, xbc[0].reshape({Bsz, T, H, P}), dt, xbc[1].reshape({Bsz, T, G, N}),
                                            xbc[2].reshape({Bsz, T, G, N}), initial);
    y = yc;
    state.copy_(final_state);
  }
  return gated_out_proj(l, y.reshape({Bsz, T, I}), gate, x);  // [B, T, D]
}

torch::Tensor ChunkedPath::normed_in_proj(int64_t l, const torch::Tensor& x) {
  const auto& w = weights_.layers[static_cast<size_t>(l)];
  const torch::Tensor h = rms_norm(x.to(dtype_), w.norm_weight);  // [B, T, D]
  return torch::linear(h, w.in_proj_weight, w.in_proj_bias);
}

torch::Tensor ChunkedPath::gated_out_proj(int64_t l, const torch::Tensor& y, const torch::Tensor& gate,
                                          const torch::Tensor& residual) {
  const torch::Tensor normed = gated_rms_norm(l, y, gate);  // [B, T, I]
  return out_proj_residual(l, normed.to(dtype_), residual);
}

torch::Tensor ChunkedPath::out_proj_residual(int64_t l, const torch::Tensor& normed, const torch::Tensor& residual) {
  const auto& w = weights_.layers[static_cast<size_t>(l)];
  return residual + torch::linear(normed, w.out_proj_weight, w.out_proj_bias);
}

std::pair<torch::Tensor, torch::Tensor> ChunkedPath::decode_step(int64_t l, const torch::Tensor& xBC_raw,
                                                                 const torch::Tensor& dt_raw, torch::Tensor& window,
                                                                 const torch::Tensor& state) {
  const auto& c = config_;
  const int64_t Bsz = xBC_raw.size(0), H = c.num_heads, P = c.head_dim, G = c.n_groups, N = c.state_size;
  // Under autograd (the real-cache optimizer) the state read here may be saved for backward
  // (state * decay saves the state once decay depends on Δ through earlier layers); read a clone,
  // so writing the new state into the cache afterwards does not invalidate the graph. A layer none
  // of whose inputs carries gradient records no graph and needs no clone.
  const bool tracked = torch::GradMode::is_enabled() &&
                       (xBC_raw.requires_grad() || dt_raw.requires_grad() || state.requires_grad());
  const torch::Tensor state_in = tracked ? state.clone() : state;
  auto [xBC, new_window] = causal_conv1d(l, xBC_raw, window, Branch::kStep);  // [B, 1, C], [B, C, K]
  {
    torch::NoGradGuard no_grad;  // the cache holds values; gradients flow through the outputs
    window.copy_(new_window);
  }
  const auto xbc = xBC.split_with_sizes({H * P, G * N, G * N}, -1);
  const torch::Tensor dt = discretize_dt(l, dt_raw, Branch::kStep);  // [B, 1, H] fp32
  // squeeze, not select: the same values, and its backward is a view (select's allocates).
  return selective_state_update(l, xbc[0].reshape({Bsz, H, P}), dt.squeeze(1), xbc[1].reshape({Bsz, G, N}),
                                xbc[2].reshape({Bsz, G, N}), state_in);
}

torch::Tensor ChunkedPath::rms_norm(const torch::Tensor& x, const torch::Tensor& weight) {
  return aten_ops::rms_norm(x, weight, config_.layer_norm_epsilon);
}

std::pair<torch::Tensor, torch::Tensor> ChunkedPath::causal_conv1d(int64_t l, const torch::Tensor& xBC,
                                                            const torch::Tensor& window, Branch) {
  const auto& w = weights_.layers[static_cast<size_t>(l)];
  return aten_ops::causal_conv1d(xBC, window, w.conv1d_weight, w.conv1d_bias);
}

torch::Tensor ChunkedPath::discretize_dt(int64_t l, const torch::Tensor& dt_raw, Branch) {
  // The clamp applies on every branch, decode included (SPEC §2).
  return aten_ops::discretize_dt(dt_raw, weights_.layers[static_cast<size_t>(l)].dt_bias, config_.time_step_min,
                                 config_.time_step_max);
}

std::pair<torch::Tensor, torch::Tensor> ChunkedPath::ssd_chunk_scan(int64_t l, const torch::Tensor& x,
                                                                const torch::Tensor& dt, const torch::Tensor& Bm,
                                                                const torch::Tensor& Cm,
                                                                const torch::Tensor& initial_state) {
  return aten_ops::ssd_chunk_scan(x, dt, A_[static_cast<size_t>(l)], Bm, Cm,
                                  weights_.layers[static_cast<size_t>(l)].D, initial_state, chunk_size_);
}

std::pair<torch::Tensor, torch::Tensor> ChunkedPath::selective_state_update(int64_t l, const torch::Tensor& x,
                                                                  const torch::Tensor& dt, const torch::Tensor& Bm,
                                                                  const torch::Tensor& Cm, const torch::Tensor& state) {
  return aten_ops::selective_state_update(x, dt, A_[static_cast<size_t>(l)], Bm, Cm,
                                          weights_.layers[static_cast<size_t>(l)].D, state);
}

torch::Tensor ChunkedPath::gated_rms_norm(int64_t l, const torch::Tensor& y, const torch::Tensor& gate) {
  return aten_ops::gated_rms_norm(y, gate, weights_.layers[static_cast<size_t>(l)].gated_norm_weight,
                                  config_.layer_norm_epsilon, config_.gated_norm_group_size());
}

}  // namespace mambadiff
