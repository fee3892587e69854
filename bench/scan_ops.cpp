#include "bench/scan_ops.h"

#include "engine/aten_ops.h"
#include "engine/errors.h"
#if MAMBADIFF_CUDA_PATH
#include "cuda_path/fused_ops.h"
#endif

namespace mambadiff::bench {

namespace {

// The path whose ops are the fused kernels; every other differentiable path runs the ATen ops.
constexpr const char* kFusedPath = "cuda";

#if MAMBADIFF_CUDA_PATH
std::pair<torch::Tensor, torch::Tensor> fused_scan(const ScanInputs& in, int64_t chunk,
                                                   const torch::Tensor& final_state_out) {
  return fused::ssd_chunk_scan(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, in.initial, final_state_out, chunk);
}
#else
[[noreturn]] void no_fused_build() {
  throw InputError("bench --path cuda: this build has no CUDA kernels (no nvcc or no CUDA LibTorch at configure time)");
}
#endif

}  // namespace

ScanInputs make_scan_inputs(const ScanShape& s, torch::ScalarType act_dtype, const torch::Device& device,
                            uint64_t seed) {
  torch::manual_seed(seed);
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(device);
  const int64_t HP = s.heads * s.head_dim, GN = s.groups * s.state_size;
  ScanInputs in;
  in.shape = s;
  const torch::Tensor xBC = torch::randn({s.batch, s.tokens, HP + 2 * GN}, f32).to(act_dtype);  // [B, L, HP + 2 GN]
  in.x = xBC.narrow(2, 0, HP).view({s.batch, s.tokens, s.heads, s.head_dim});
  in.Bm = xBC.narrow(2, HP, GN).view({s.batch, s.tokens, s.groups, s.state_size});
  in.Cm = xBC.narrow(2, HP + GN, GN).view({s.batch, s.tokens, s.groups, s.state_size});
  in.dt = torch::softplus(torch::randn({s.batch, s.tokens, s.heads}, f32) - 4.0);
  in.A = -(torch::rand({s.heads}, f32) * 4.0 + 0.5);
  in.D = torch::randn({s.heads}, f32);
  in.initial = torch::randn({s.batch, s.heads, s.head_dim, s.state_size}, f32);
  return in;
}

std::pair<torch::Tensor, torch::Tensor> run_scan(const std::string& path, const ScanInputs& in) {
  if (path == kFusedPath) {
#if MAMBADIFF_CUDA_PATH
    return fused_scan(in, in.shape.chunk, torch::Tensor());
#else
    no_fused_build();
#endif
  }
  return aten_ops::ssd_chunk_scan(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, in.initial, in.shape.chunk);
}

torch::Tensor run_state_update(const std::string& path, const ScanInputs& in) {
  if (path == kFusedPath) {
#if MAMBADIFF_CUDA_PATH
    // CudaPath::selective_state_update: the scan at T = 1 writing the state it read.
    return fused_scan(in, in.shape.chunk, in.initial).first;
#else
    no_fused_build();
#endif
  }
  // ChunkedPath's step: the recurrence on [B, H, P] / [B, G, N] rows, then the new state copied in.
  const ScanShape& s = in.shape;
  auto [y, new_state] = aten_ops::selective_state_update(
      in.x.view({s.batch, s.heads, s.head_dim}), in.dt.view({s.batch, s.heads}), in.A,
      in.Bm.view({s.batch, s.groups, s.state_size}), in.Cm.view({s.batch, s.groups, s.state_size}), in.D, in.initial);
  in.initial.copy_(new_state);
  return y.unsqueeze(1);
}

std::string scan_op_name(const std::string& path) {
  return path == kFusedPath ? "fused::ssd_chunk_scan" : "aten_ops::ssd_chunk_scan";
}

std::string state_update_op_name(const std::string& path) {
  return path == kFusedPath ? "fused::ssd_chunk_scan (T = 1, state in place)"
                            : "aten_ops::selective_state_update + copy into the state";
}

}  // namespace mambadiff::bench
