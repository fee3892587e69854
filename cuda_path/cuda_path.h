// The `cuda` path (SPEC §4): the layer structure of the chunked path with every logical kernel
// replaced by one fused CUDA kernel (kernels/fused_kernels.h) — RMSNorm, causal conv1d (forward
// and update), dt discretization, the selective scan with initial/final states (prefill,
// continue, decode step), gated RMSNorm — forward and, for the decode step the real-cache
// optimizer differentiates, backward. in_proj/out_proj/lm_head stay cuBLAS GEMMs. float32 and
// bfloat16 activations, fp32 SSM state.
#pragma once

#include "engine/chunked_path.h"

namespace mambadiff {

class CudaPath : public ChunkedPath {
 public:
  // InputError for a dtype other than float32/bfloat16 or a device that is not CUDA.
  CudaPath(const Mamba2Checkpoint& checkpoint, torch::ScalarType dtype, torch::Device device);

  std::string name() const override { return "cuda"; }

 protected:
  torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight) override;
  std::pair<torch::Tensor, torch::Tensor> causal_conv1d(int64_t layer, const torch::Tensor& xBC, const torch::Tensor& window,
                                                 Branch branch) override;
  torch::Tensor discretize_dt(int64_t layer, const torch::Tensor& dt_raw, Branch branch) override;
  std::pair<torch::Tensor, torch::Tensor> ssd_chunk_scan(int64_t layer, const torch::Tensor& x, const torch::Tensor& dt,
                                                     const torch::Tensor& Bm, const torch::Tensor& Cm,
                                                     const torch::Tensor& initial_state) override;
  std::pair<torch::Tensor, torch::Tensor> selective_state_update(int64_t layer, const torch::Tensor& x, const torch::Tensor& dt,
                                                       const torch::Tensor& Bm, const torch::Tensor& Cm,
                                                       const torch::Tensor& state) override;
  torch::Tensor gated_rms_norm(int64_t layer, const torch::Tensor& y, const torch::Tensor& gate) override;
  // One fused kernel each way (fused::decode_step) where it takes the shapes; else the ops above.
  std::pair<torch::Tensor, torch::Tensor> decode_step(int64_t layer, const torch::Tensor& xBC_raw, const torch::Tensor& dt_raw,
                                                      torch::Tensor& window, const torch::Tensor& state) override;
  torch::Tensor out_proj_residual(int64_t layer, const torch::Tensor& normed, const torch::Tensor& residual) override;
  // At decode (one token, no gradient): the norm and the product in one kernel each
  // (fused::norm_in_proj, fused::gated_norm_out_proj); else the ops one by one.
  torch::Tensor normed_in_proj(int64_t layer, const torch::Tensor& x) override;
  torch::Tensor gated_out_proj(int64_t layer, const torch::Tensor& y, const torch::Tensor& gate,
                               const torch::Tensor& residual) override;

 private:
  std::vector<torch::Tensor> A_fp32_;  // per layer: -exp(A_log) [H] fp32 (the scan's decay rates)
};

}  // namespace mambadiff
