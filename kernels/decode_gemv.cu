// The decode step's two matrix-vector products with the norms folded in (kernels/fused_kernels.h):
//   in:  proj = in_proj · (w_norm * RMSNorm(x))                              (rms_norm + in_proj)
//   out: x' = residual + out_proj · (w_gated * RMSNorm_group(y * SiLU(gate)))  (gated_rms_norm +
//        out_proj + the residual add)
// At one token a product reads its weight once and each weight is used once: the kernels are
// bound by the weight read. Every block first computes the normalized vector it multiplies (D or
// I values into shared memory, from the row's few KB: recomputed by each block rather than
// written and read back by a kernel of its own), then each warp takes `kRowsPerWarp` output rows,
// reading each weight row as 16-byte vectors. The norms round where the separate kernels store
// their outputs (rms_norm.cu); the products accumulate in fp32 and round once to the activation
// dtype, as cuBLAS does for the separate GEMM (in another order: equal within fp32 rounding).
#include <cstdint>

#include "kernels/device_math.cuh"

namespace mambadiff::kernels {

namespace {

using device::block_sum;
using device::load;
using device::round_to;
using device::store;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kRowsPerWarp = 4;
constexpr int kRowsPerBlock = kRowsPerWarp * kWarps;

// Elements of T in one 16-byte load.
template <typename T>
constexpr int kVector = 16 / sizeof(T);

__device__ __forceinline__ void unpack(const float4& v, float (&out)[4]) {
  out[0] = v.x;
  out[1] = v.y;
  out[2] = v.z;
  out[3] = v.w;
}
__device__ __forceinline__ void unpack(const float4& v, float (&out)[8]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}

// Σ_k weight[row, k] vec[k] for the warp's rows (a fixed-order fp32 sum: deterministic); lane 0
// calls emit(row, sum). `vec` in shared memory; cols % kVector<T> == 0 and 16-byte aligned rows.
template <typename T, typename Emit>
__device__ __forceinline__ void warp_rows_times(const T* weight, int64_t rows, int64_t cols, const float* vec,
                                                int64_t first_row, Emit emit) {
  const int lane = threadIdx.x % 32;
  constexpr int V = kVector<T>;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t row = first_row + r;
    if (row >= rows) break;  // warp-uniform
    const float4* w = reinterpret_cast<const float4*>(weight + row * cols);
    float acc = 0.0f;
    for (int64_t v = lane; v < cols / V; v += 32) {
      float e[V];
      unpack(__ldg(&w[v]), e);
#pragma unroll
      for (int i = 0; i < V; ++i) acc += e[i] * vec[v * V + i];
    }
    acc = device::warp_sum(acc);
    if (lane == 0) emit(row, acc);
  }
}

// proj[b] = in_proj · (w_norm * RMSNorm(round_T(x[b]))): the layer's x.to(dtype) + rms_norm + linear.
template <typename TX, typename T>
__global__ void __launch_bounds__(kThreads) norm_in_proj_kernel(NormInProjParams p) {
  extern __shared__ float normed[];  // [D]
  __shared__ float scratch[32];
  const int64_t b = blockIdx.y, D = p.dim;
  const TX* x = static_cast<const TX*>(p.x) + b * D;
  const T* w_norm = static_cast<const T*>(p.norm_weight);
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const float v = round_to<T>(load(x, i));
    ss += v * v;
  }
  const float r = rsqrtf(block_sum(ss, scratch) / static_cast<float>(D) + p.eps);
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    normed[i] = round_to<T>(load(w_norm, i) * round_to<T>(round_to<T>(load(x, i)) * r));
  }
  __syncthreads();
  T* out = static_cast<T*>(p.out) + b * p.out_features;
  const T* bias = static_cast<const T*>(p.bias);
  const int64_t first = int64_t(blockIdx.x) * kRowsPerBlock + (threadIdx.x / 32) * kRowsPerWarp;
  warp_rows_times(static_cast<const T*>(p.weight), p.out_features, D, normed, first, [&](int64_t row, float acc) {
    store(out, row, bias ? acc + load(bias, row) : acc);
  });
}

// x'[b] = residual[b] + out_proj · (w * RMSNorm_group(y[b] * SiLU(gate[b]))).
template <typename TR, typename T>
__global__ void __launch_bounds__(kThreads) gated_norm_out_proj_kernel(GatedNormOutProjParams p) {
  extern __shared__ float normed[];  // [I]
  __shared__ float scratch[32];
  const int64_t b = blockIdx.y, I = p.channels, group_size = p.group_size;
  const float* y = p.y + b * I;
  const T* gate = static_cast<const T*>(p.gate) + b * p.gate_stride;
  const T* w = static_cast<const T*>(p.norm_weight);
  for (int64_t c0 = 0; c0 < I; c0 += group_size) {
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < group_size; i += blockDim.x) {
      const float h = y[c0 + i] * device::silu(load(gate, c0 + i));
      normed[c0 + i] = h;
      ss += h * h;
    }
    const float r = rsqrtf(block_sum(ss, scratch) / static_cast<float>(group_size) + p.eps);
    for (int64_t i = threadIdx.x; i < group_size; i += blockDim.x) {
      normed[c0 + i] = round_to<T>(load(w, c0 + i) * round_to<T>(normed[c0 + i] * r));  // this thread wrote it
    }
  }
  __syncthreads();
  const TR* residual = static_cast<const TR*>(p.residual) + b * p.out_features;
  TR* out = static_cast<TR*>(p.out) + b * p.out_features;
  const int64_t first = int64_t(blockIdx.x) * kRowsPerBlock + (threadIdx.x / 32) * kRowsPerWarp;
  warp_rows_times(static_cast<const T*>(p.weight), p.out_features, I, normed, first, [&](int64_t row, float acc) {
    // A residual in the activation dtype: one GEMM with beta = 1 (one rounding); an fp32 residual
    // stream: the product rounded to the activation dtype, then added in fp32.
    const float sum = sizeof(TR) == sizeof(T) ? acc + load(residual, row) : load(residual, row) + round_to<T>(acc);
    store(out, row, sum);
  });
}

template <typename T>
bool vector_aligned(const void* p, int64_t cols) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0 && cols % kVector<T> == 0;
}

}  // namespace

int norm_in_proj_forward(const NormInProjParams& p, void* stream) {
  if (p.dim < 1 || p.dim > kDecodeGemvMaxCols || p.out_features < 1) return cudaErrorInvalidValue;
  const bool fp32 = p.act == Act::kFloat32;
  if (!(fp32 ? vector_aligned<float>(p.weight, p.dim) : vector_aligned<__nv_bfloat16>(p.weight, p.dim))) {
    return cudaErrorInvalidValue;
  }
  if (p.batch == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(device::ceil_div(p.out_features, kRowsPerBlock)), static_cast<unsigned>(p.batch));
  const size_t smem = static_cast<size_t>(p.dim) * sizeof(float);
  const auto st = static_cast<cudaStream_t>(stream);
  if (fp32) {
    norm_in_proj_kernel<float, float><<<grid, kThreads, smem, st>>>(p);
  } else if (p.x_act == Act::kFloat32) {
    norm_in_proj_kernel<float, __nv_bfloat16><<<grid, kThreads, smem, st>>>(p);
  } else {
    norm_in_proj_kernel<__nv_bfloat16, __nv_bfloat16><<<grid, kThreads, smem, st>>>(p);
  }
  return cudaGetLastError();
}

int gated_norm_out_proj_forward(const GatedNormOutProjParams& p, void* stream) {
  if (p.channels < 1 || p.channels > kDecodeGemvMaxCols || p.group_size < 1 || p.channels % p.group_size != 0 ||
      p.out_features < 1) {
    return cudaErrorInvalidValue;
  }
  const bool fp32 = p.act == Act::kFloat32;
  if (!(fp32 ? vector_aligned<float>(p.weight, p.channels) : vector_aligned<__nv_bfloat16>(p.weight, p.channels))) {
    return cudaErrorInvalidValue;
  }
  if (p.batch == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(device::ceil_div(p.out_features, kRowsPerBlock)), static_cast<unsigned>(p.batch));
  const size_t smem = static_cast<size_t>(p.channels) * sizeof(float);
  const auto st = static_cast<cudaStream_t>(stream);
  if (fp32) {
    gated_norm_out_proj_kernel<float, float><<<grid, kThreads, smem, st>>>(p);
  } else if (p.residual_act == Act::kFloat32) {
    gated_norm_out_proj_kernel<float, __nv_bfloat16><<<grid, kThreads, smem, st>>>(p);
  } else {
    gated_norm_out_proj_kernel<__nv_bfloat16, __nv_bfloat16><<<grid, kThreads, smem, st>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace mambadiff::kernels
