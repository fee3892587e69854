#include "cuda_path/cuda_path.h"

#include <fmt/format.h>

#include <cstdlib>
#include <string>

#include "cuda_path/fused_ops.h"
#include "engine/errors.h"

namespace mambadiff {

namespace {

torch::ScalarType checked_dtype(torch::ScalarType dtype, const torch::Device& device) {
  if (dtype != torch::kFloat32 && dtype != torch::kBFloat16) {
    throw InputError(fmt::format("cuda: float32 or bfloat16 only, got {}", c10::toString(dtype)));
  }
  if (!device.is_cuda()) throw InputError(fmt::format("cuda: device {} is not a CUDA device", device.str()));
  return dtype;
}

// MAMBADIFF_DECODE_FUSION=off runs the decode step's ops one by one (the kernels before the fusions:
// bench times both in one run); on (the default) fuses them. Read on every call.
bool decode_fusion() {
  const char* env = std::getenv("MAMBADIFF_DECODE_FUSION");
  if (env == nullptr || std::string(env) == "on") return true;
  if (std::string(env) == "off") return false;
  throw InputError(fmt::format("MAMBADIFF_DECODE_FUSION='{}': expected on or off", env));
}

}  // namespace

CudaPath::CudaPath(const Mamba2Checkpoint& ck, torch::ScalarType dtype, torch::Device device)
    : ChunkedPath(ck, checked_dtype(dtype, device), device) {
  // The same values as the chunked path's A (computed from the run-dtype A_log), in fp32.
  for (const auto& a : A_) A_fp32_.push_back(a.to(torch::kFloat32).contiguous());
}

torch::Tensor CudaPath::rms_norm(const torch::Tensor& x, const torch::Tensor& weight) {
  return fused::rms_norm(x, weight, config_.layer_norm_epsilon);
}

std::pair<torch::Tensor, torch::Tensor> CudaPath::causal_conv1d(int64_t l, const torch::Tensor& xBC,
                                                         const torch::Tensor& window, Branch branch) {
  const auto& w = weights_.layers[static_cast<size_t>(l)];
  // Decode and continue read the cache's own window: the kernel updates it in place (each
  // thread reads its channel's history before writing), and the layer's copy into the cache
  // becomes a copy onto itself, which ATen skips. Prefill reads a zero history.
  const bool in_place = branch != Branch::kPrefill && window.is_contiguous() && window.scalar_type() == dtype_;
  return fused::causal_conv1d(xBC, window, w.conv1d_weight, w.conv1d_bias, in_place ? window : torch::Tensor());
}

torch::Tensor CudaPath::discretize_dt(int64_t l, const torch::Tensor& dt_raw, Branch) {
  // The clamp applies on every branch, decode included (SPEC §2).
  return fused::discretize_dt(dt_raw, weights_.layers[static_cast<size_t>(l)].dt_bias, config_.time_step_min,
                              config_.time_step_max);
}

std::pair<torch::Tensor, torch::Tensor> CudaPath::ssd_chunk_scan(int64_t l, const torch::Tensor& x, const torch::Tensor& dt,
                                                             const torch::Tensor& Bm, const torch::Tensor& Cm,
                                                             const torch::Tensor& initial_state) {
  return fused::ssd_chunk_scan(x, dt, A_fp32_[static_cast<size_t>(l)], Bm, Cm, weights_.layers[static_cast<size_t>(l)].D,
                         initial_state, {}, chunk_size_);
}

std::pair<torch::Tensor, torch::Tensor> CudaPath::selective_state_update(int64_t l, const torch::Tensor& x,
                                                               const torch::Tensor& dt, const torch::Tensor& Bm,
                                                               const torch::Tensor& Cm, const torch::Tensor& state) {
  // The decode step is the scan at T = 1: x [B, H, P] -> [B, 1, H, P] and so on. Where no
  // gradient is recorded, `state` is the cache's own tensor and is updated in place (the layer's
  // copy into the cache becomes a copy onto itself, which ATen skips).
  const bool tracked = torch::GradMode::is_enabled() &&
                       (x.requires_grad() || dt.requires_grad() || Bm.requires_grad() || Cm.requires_grad() ||
                        state.requires_grad());
  const bool in_place = !tracked && state.is_contiguous() && state.scalar_type() == torch::kFloat32;
  auto [y, new_state] = fused::ssd_chunk_scan(x.unsqueeze(1), dt.unsqueeze(1), A_fp32_[static_cast<size_t>(l)],
                                        Bm.unsqueeze(1), Cm.unsqueeze(1), weights_.layers[static_cast<size_t>(l)].D,
                                        state, in_place ? state : torch::Tensor());
  return {y.squeeze(1), new_state};
}

std::pair<torch::Tensor, torch::Tensor> CudaPath::decode_step(int64_t l, const torch::Tensor& xBC_raw,
                                                              const torch::Tensor& dt_raw, torch::Tensor& window,
                                                              const torch::Tensor& state) {
  const auto& w = weights_.layers[static_cast<size_t>(l)];
  const fused::DecodeStepWeights weights{w.conv1d_weight, w.conv1d_bias, w.dt_bias, A_fp32_[static_cast<size_t>(l)], w.D,
                                         config_.time_step_min, config_.time_step_max, config_.n_groups};
  // The clamp applies on every branch, decode included (SPEC §2), as in discretize_dt.
  if (!decode_fusion() || !fused::decode_step_supported(xBC_raw, window, state, weights)) {
    return ChunkedPath::decode_step(l, xBC_raw, dt_raw, window, state);
  }
  return fused::decode_step(xBC_raw, dt_raw, window, state, weights);
}

torch::Tensor CudaPath::out_proj_residual(int64_t l, const torch::Tensor& normed, const torch::Tensor& residual) {
  const auto& w = weights_.layers[static_cast<size_t>(l)];
  if (residual.scalar_type() != normed.scalar_type() || w.out_proj_bias.defined()) {
    return ChunkedPath::out_proj_residual(l, normed, residual);
  }
  // residual + normed @ W^T as one GEMM accumulating onto the residual (beta = 1).
  const int64_t D = residual.size(-1), I = normed.size(-1);
  return torch::addmm(residual.reshape({-1, D}), normed.reshape({-1, I}), w.out_proj_weight.t()).view(residual.sizes());
}

torch::Tensor CudaPath::normed_in_proj(int64_t l, const torch::Tensor& x) {
  const auto& w = weights_.layers[static_cast<size_t>(l)];
  if (!decode_fusion() || !fused::norm_in_proj_supported(x, w.norm_weight, w.in_proj_weight, w.in_proj_bias)) {
    return ChunkedPath::normed_in_proj(l, x);
  }
  return fused::norm_in_proj(x, w.norm_weight, config_.layer_norm_epsilon, w.in_proj_weight, w.in_proj_bias);
}

torch::Tensor CudaPath::gated_out_proj(int64_t l, const torch::Tensor& y, const torch::Tensor& gate,
                                       const torch::Tensor& residual) {
  const auto& w = weights_.layers[static_cast<size_t>(l)];
  if (!decode_fusion() || w.out_proj_bias.defined() || !fused::gated_norm_out_proj_supported(y, gate, w.gated_norm_weight,
                                                                         config_.gated_norm_group_size(),
                                                                         w.out_proj_weight, residual)) {
    return ChunkedPath::gated_out_proj(l, y, gate, residual);
  }
  return fused::gated_norm_out_proj(y, gate, w.gated_norm_weight, config_.layer_norm_epsilon,
                                    config_.gated_norm_group_size(), w.out_proj_weight, residual);
}

torch::Tensor CudaPath::gated_rms_norm(int64_t l, const torch::Tensor& y, const torch::Tensor& gate) {
  return fused::gated_rms_norm(y, gate, weights_.layers[static_cast<size_t>(l)].gated_norm_weight,
                               config_.layer_norm_epsilon, config_.gated_norm_group_size());
}

}  // namespace mambadiff
