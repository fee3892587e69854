// The one place `bench` calls a path's scan and decode-step ops on their own (outside a model):
// the `cuda` path's fused kernels (cuda_path/fused_ops.h), otherwise the chunked path's ATen ops
// (engine/aten_ops.h) on the path's device. When an op's signature changes, this file changes.
#pragma once

#include <torch/torch.h>

#include <string>
#include <utility>

#include "bench/op_costs.h"

namespace mambadiff::bench {

// The inputs of one scan, laid out as the model hands them over: x, B and C are views of one
// conv output row [B, L, H*P + 2*G*N] (the split of xBC), dt is discretized already.
struct ScanInputs {
  ScanShape shape;
  torch::Tensor x;        // [B, L, H, P] in the activation dtype
  torch::Tensor dt;       // [B, L, H] fp32, after softplus
  torch::Tensor A;        // [H] fp32, negative
  torch::Tensor Bm, Cm;   // [B, L, G, N] in the activation dtype
  torch::Tensor D;        // [H] fp32
  torch::Tensor initial;  // [B, H, P, N] fp32
};

// Random inputs of `shape` (values as shared/anchors/mamba_ssm_kernels.py draws them: x, B, C
// standard normal, dt = softplus(N(0,1) - 4), A in [-4.5, -0.5], D standard normal), from `seed`.
ScanInputs make_scan_inputs(const ScanShape& shape, torch::ScalarType act_dtype, const torch::Device& device,
                            uint64_t seed);

// The prefill/continue scan with the initial state: (y [B, L, H, P], final state [B, H, P, N] fp32).
// path "cuda": fused::ssd_chunk_scan; any other path: aten_ops::ssd_chunk_scan with shape.chunk.
std::pair<torch::Tensor, torch::Tensor> run_scan(const std::string& path, const ScanInputs& in);

// One decode step (tokens == 1) as the path's decode runs it: the state `in.initial` is updated in
// place (path "cuda": the fused scan at T = 1 writing its own input state; otherwise
// aten_ops::selective_state_update and a copy into the state, as ChunkedPath's step does).
// Returns y [B, 1, H, P].
torch::Tensor run_state_update(const std::string& path, const ScanInputs& in);

// The op each of them calls on `path`, for the report.
std::string scan_op_name(const std::string& path);
std::string state_update_op_name(const std::string& path);

}  // namespace mambadiff::bench
