// The `chunked` path: the Mamba2 model on ATen ops with the chunked SSD scan for prefill and
// continue and the state-update recurrence for step. Runs on CPU and GPU in the run's dtype
// (float32 or bfloat16 activations; fp32 SSM state; fp32 scan math).
//
// Each logical kernel is a virtual method: the `cuda` path overrides them with fused kernels and
// test mutants override one to plant a real class of bug.
#pragma once

#include "engine/aten_ops.h"
#include "engine/execution_path.h"

namespace mambadiff {

class ChunkedPath : public ExecutionPath {
 public:
  // chunk_size 0 = the config's.
  ChunkedPath(const Mamba2Checkpoint& checkpoint, torch::ScalarType dtype, torch::Device device,
              int64_t chunk_size = 0);

  std::string name() const override { return "chunked"; }
  Mamba2Cache new_cache(int64_t batch_size) const override;
  int64_t chunk_size() const { return chunk_size_; }
  const Mamba2Weights& weights() const { return weights_; }

 protected:
  ForwardOutput run(const torch::Tensor& tokens, Mamba2Cache& cache, Branch branch) override;

  // The residual stream through one layer: x + mixer(x). x: [B, T, D] in the residual dtype ->
  // [B, T, D]; updates the layer's cache.
  virtual torch::Tensor layer_forward(int64_t layer, const torch::Tensor& x, Mamba2Cache& cache, Branch branch,
                                      DispatchRecord& record);

  // Logical kernels (see aten_ops.h for shapes).
  virtual torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight);
  virtual std::pair<torch::Tensor, torch::Tensor> causal_conv1d(int64_t layer, const torch::Tensor& xBC,
                                                         const torch::Tensor& window, Branch branch);
  virtual torch::Tensor discretize_dt(int64_t layer, const torch::Tensor& dt_raw, Branch branch);
  virtual std::pair<torch::Tensor, torch::Tensor> ssd_chunk_scan(int64_t layer, const torch::Tensor& x,
                                                             const torch::Tensor& dt, const torch::Tensor& Bm,
                                                             const torch::Tensor& Cm,
                                                             const torch::Tensor& initial_state);
  virtual std::pair<torch::Tensor, torch::Tensor> selective_state_update(int64_t layer, const torch::Tensor& x,
                                                               const torch::Tensor& dt, const torch::Tensor& Bm,
                                                               const torch::Tensor& Cm, const torch::Tensor& state);
  virtual torch::Tensor gated_rms_norm(int64_t layer, const torch::Tensor& y, const torch::Tensor& gate);
  // residual + out_proj(normed).   normed: [B, T, I] run dtype   residual: [B, T, D]
  virtual torch::Tensor out_proj_residual(int64_t layer, const torch::Tensor& normed, const torch::Tensor& residual);

  Mamba2Weights weights_;        // compute dtype, on device
  std::vector<torch::Tensor> A_;  // per layer: -exp(A_log), [H] fp32
  int64_t chunk_size_;
};

}  // namespace mambadiff
