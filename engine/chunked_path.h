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
  // The decode step's conv, dt and state update (T = 1).   xBC_raw: [B, 1, C] pre-conv   dt_raw: [B, 1, H]
  // window: the cache's [B, C, K], shifted to the new token   state: the cache's [B, H, P, N].
  // Returns (y [B, H, P] fp32, the new state: `state` itself where it was updated in place). Here the
  // logical kernels one after the other; the cuda path fuses them into one kernel.
  virtual std::pair<torch::Tensor, torch::Tensor> decode_step(int64_t layer, const torch::Tensor& xBC_raw,
                                                              const torch::Tensor& dt_raw, torch::Tensor& window,
                                                              const torch::Tensor& state);
  // residual + out_proj(normed).   normed: [B, T, I] run dtype   residual: [B, T, D]
  virtual torch::Tensor out_proj_residual(int64_t layer, const torch::Tensor& normed, const torch::Tensor& residual);
  // The mixer's way in: in_proj(rms_norm(x)).   x: [B, T, D] residual dtype -> [B, T, I + C + H] run dtype.
  // The way out: residual + out_proj(gated_rms_norm(y, gate)).   y: [B, T, I] fp32   gate: [B, T, I]
  // residual: [B, T, D]. Here the logical kernels above; the cuda path folds each into one kernel at decode.
  virtual torch::Tensor normed_in_proj(int64_t layer, const torch::Tensor& x);
  virtual torch::Tensor gated_out_proj(int64_t layer, const torch::Tensor& y, const torch::Tensor& gate,
                                       const torch::Tensor& residual);

  Mamba2Weights weights_;        // compute dtype, on device
  std::vector<torch::Tensor> A_;  // per layer: -exp(A_log), [H] fp32
  int64_t chunk_size_;
};

}  // namespace mambadiff
