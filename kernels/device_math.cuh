// Device helpers shared by the fused kernels: activation loads/stores, SiLU, softplus and
// deterministic block reductions (fixed order: the same bits on every run, which the zero-Δ gate
// and bit-identical replays rely on).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/fused_kernels.h"

namespace mambadiff::kernels::device {

__device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16(v); }

// Rounds v to the activation type and back (what ATen does between two ops in that dtype).
template <typename T>
__device__ __forceinline__ float round_to(float v) {
  T tmp[1];
  store(tmp, 0, v);
  return load(tmp, 0);
}

__device__ __forceinline__ float sigmoid(float z) { return 1.0f / (1.0f + expf(-z)); }
__device__ __forceinline__ float silu(float z) { return z * sigmoid(z); }
__device__ __forceinline__ float silu_grad(float z) {
  const float s = sigmoid(z);
  return s * (1.0f + z * (1.0f - s));
}

// torch's softplus (threshold 20: linear above it).
__device__ __forceinline__ float softplus(float u) { return u > 20.0f ? u : log1pf(expf(u)); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` holds 32 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < warps; ++w) total += scratch[w];
  return total;
}

// The RMSNorm scale rsqrt(mean_i value(i)² + eps) over i < n: each thread sums i = threadIdx.x,
// + blockDim.x, ..., then block_sum adds the threads in its fixed order; every thread gets it. The
// one definition of every norm kernel's scale (rms_norm.cu, decode_gemv.cu).
template <typename Value>
__device__ __forceinline__ float block_rms_scale(Value value, int64_t n, float eps, float* scratch) {
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = value(i);
    ss += v * v;
  }
  return rsqrtf(block_sum(ss, scratch) / static_cast<float>(n) + eps);
}

// One normalized value as ATen computes weight * (v * scale) in the weight's dtype T: v * scale
// rounded to T, then times the weight (the caller stores the product in T).
template <typename T>
__device__ __forceinline__ float rms_normed(float weight, float v, float scale) {
  return weight * round_to<T>(v * scale);
}

inline int ceil_div(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

}  // namespace mambadiff::kernels::device

// Instantiates `LAUNCH(T)` for the activation dtype (a statement returning the launch's error).
#define MAMBADIFF_DISPATCH_ACT(act, LAUNCH)                                            \
  do {                                                                                \
    if ((act) == ::mambadiff::kernels::Act::kFloat32) {                               \
      using T = float;                                                                \
      LAUNCH;                                                                         \
    } else {                                                                          \
      using T = __nv_bfloat16;                                                        \
      LAUNCH;                                                                         \
    }                                                                                 \
  } while (0)
