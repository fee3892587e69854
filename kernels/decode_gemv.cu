// The decode step's two matrix-vector products with the norms folded in (kernels/fused_kernels.h):
//   in:  proj = in_proj · (w_norm * RMSNorm(x))                              (rms_norm + in_proj)
//   out: x' = residual + out_proj · (w_gated * RMSNorm_group(y * SiLU(gate)))  (gated_rms_norm +
//        out_proj + the residual add)
// At one token a product reads its weight once and each weight is used once: the kernels are
// bound by the weight read. Every block first computes the normalized vector it multiplies (D or
// I values into shared memory, from the row's few KB: recomputed by each block rather than
// written and read back by a kernel of its own), then each warp takes one output row, read as
// 16-byte vectors. The norms round where the separate kernels store
// their outputs (rms_norm.cu); the products accumulate in fp32 and round once to the activation
// dtype, as cuBLAS does for the separate GEMM (in another order: equal within fp32 rounding).
#include <cstdint>

#include "kernels/device_math.cuh"

namespace mambadiff::kernels {

namespace {

using device::load;
using device::round_to;
using device::store;

// One output row a warp, 4 warps a block: the 130m shape's out_proj (768 rows) still spreads over
// 192 blocks. A lane holds kChunk 16-byte vectors of its row in flight (4 KB a warp); the row's first
// chunk is loaded before the block computes its normalized vector (the weight read bounds the
// kernel and needs nothing computed), so the norm hides under it.
constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = 8;

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

// A warp's weight row as 16-byte vectors, `chunk` by `chunk`: lane j holds vectors
// (chunk·kChunk + u)·32 + j, u < kChunk.
struct RowChunk {
  float4 v[kChunk];

  __device__ __forceinline__ void load(const float4* row, int64_t vectors, int64_t chunk, int lane) {
#pragma unroll
    for (int u = 0; u < kChunk; ++u) {
      const int64_t i = (chunk * kChunk + u) * 32 + lane;
      v[u] = i < vectors ? __ldg(&row[i]) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
  }
  // Σ over the chunk of weight · vec (vec in shared memory, as floats).
  template <typename T>
  __device__ __forceinline__ float dot(const float* vec, int64_t vectors, int64_t chunk, int lane) const {
    constexpr int V = kVector<T>;
    float acc = 0.0f;
#pragma unroll
    for (int u = 0; u < kChunk; ++u) {
      const int64_t i = (chunk * kChunk + u) * 32 + lane;
      if (i >= vectors) break;
      float e[V];
      unpack(v[u], e);
#pragma unroll
      for (int k = 0; k < V; ++k) acc += e[k] * vec[i * V + k];
    }
    return acc;
  }
};

// Σ_k weight[row, k] vec[k] for the warp's row, its first chunk already in `first` (a fixed-order
// fp32 sum: deterministic); every lane gets the sum.
template <typename T>
__device__ __forceinline__ float row_times(const float4* row, int64_t vectors, RowChunk& chunk_data, const float* vec,
                                           int lane) {
  float acc = chunk_data.dot<T>(vec, vectors, 0, lane);
  for (int64_t chunk = 1; chunk * kChunk * 32 < vectors; ++chunk) {
    chunk_data.load(row, vectors, chunk, lane);
    acc += chunk_data.dot<T>(vec, vectors, chunk, lane);
  }
  return device::warp_sum(acc);
}

// proj[b] = in_proj · (w_norm * RMSNorm(round_T(x[b]))): the layer's x.to(dtype) + rms_norm + linear.
template <typename TX, typename T>
__global__ void __launch_bounds__(kThreads) norm_in_proj_kernel(NormInProjParams p) {
  extern __shared__ float normed[];  // [D]
  __shared__ float scratch[32];
  const int lane = threadIdx.x % 32;
  const int64_t b = blockIdx.y, D = p.dim, row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const bool live = row < p.out_features;  // warp-uniform
  const int64_t vectors = D / kVector<T>;
  const float4* w = reinterpret_cast<const float4*>(static_cast<const T*>(p.weight) + (live ? row : 0) * D);
  RowChunk chunk;
  if (live) chunk.load(w, vectors, 0, lane);
  const TX* x = static_cast<const TX*>(p.x) + b * D;
  const T* w_norm = static_cast<const T*>(p.norm_weight);
  const auto x_in_t = [&](int64_t i) { return round_to<T>(load(x, i)); };  // the layer's x.to(dtype)
  const float r = device::block_rms_scale(x_in_t, D, p.eps, scratch);
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) normed[i] = round_to<T>(device::rms_normed<T>(load(w_norm, i), x_in_t(i), r));
  __syncthreads();
  if (!live) return;
  const float acc = row_times<T>(w, vectors, chunk, normed, lane);
  if (lane == 0) {
    const T* bias = static_cast<const T*>(p.bias);
    store(static_cast<T*>(p.out) + b * p.out_features, row, bias ? acc + load(bias, row) : acc);
  }
}

// x'[b] = residual[b] + out_proj · (w * RMSNorm_group(y[b] * SiLU(gate[b]))).
template <typename TR, typename T>
__global__ void __launch_bounds__(kThreads) gated_norm_out_proj_kernel(GatedNormOutProjParams p) {
  extern __shared__ float normed[];  // [I]
  __shared__ float scratch[32];
  const int lane = threadIdx.x % 32;
  const int64_t b = blockIdx.y, I = p.channels, group_size = p.group_size;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const bool live = row < p.out_features;  // warp-uniform
  const int64_t vectors = I / kVector<T>;
  const float4* wrow = reinterpret_cast<const float4*>(static_cast<const T*>(p.weight) + (live ? row : 0) * I);
  RowChunk chunk;
  if (live) chunk.load(wrow, vectors, 0, lane);
  const float* y = p.y + b * I;
  const T* gate = static_cast<const T*>(p.gate) + b * p.gate_stride;
  const T* w = static_cast<const T*>(p.norm_weight);
  for (int64_t c0 = 0; c0 < I; c0 += group_size) {
    // h kept in shared memory for the second pass (the slot this thread reads back is its own).
    const auto h = [&](int64_t i) { return normed[c0 + i] = y[c0 + i] * device::silu(load(gate, c0 + i)); };
    const float r = device::block_rms_scale(h, group_size, p.eps, scratch);
    for (int64_t i = threadIdx.x; i < group_size; i += blockDim.x) {
      normed[c0 + i] = round_to<T>(device::rms_normed<T>(load(w, c0 + i), normed[c0 + i], r));
    }
  }
  __syncthreads();
  if (!live) return;
  const float acc = row_times<T>(wrow, vectors, chunk, normed, lane);
  if (lane == 0) {
    const TR* residual = static_cast<const TR*>(p.residual) + b * p.out_features;
    // A residual in the activation dtype: one GEMM with beta = 1 (one rounding); an fp32 residual
    // stream: the product rounded to the activation dtype, then added in fp32.
    const float sum = sizeof(TR) == sizeof(T) ? acc + load(residual, row) : load(residual, row) + round_to<T>(acc);
    store(static_cast<TR*>(p.out) + b * p.out_features, row, sum);
  }
}

template <typename T>
bool vector_aligned(const void* p, int64_t cols) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0 && cols % kVector<T> == 0;
}

// The launch of either kernel: the weight's rows [out_features, cols] checked against the kernel's
// limits, one block per kWarps output rows and sequence, the normalized vector in dynamic shared memory.
struct GemvLaunch {
  dim3 grid;
  size_t smem = 0;
};
int gemv_launch(Act act, const void* weight, int64_t cols, int64_t out_features, int64_t batch, GemvLaunch& launch) {
  if (cols < 1 || cols > kDecodeGemvMaxCols || out_features < 1) return cudaErrorInvalidValue;
  const bool aligned = act == Act::kFloat32 ? vector_aligned<float>(weight, cols) : vector_aligned<__nv_bfloat16>(weight, cols);
  if (!aligned) return cudaErrorInvalidValue;
  launch.grid = dim3(static_cast<unsigned>(device::ceil_div(out_features, kWarps)), static_cast<unsigned>(batch));
  launch.smem = static_cast<size_t>(cols) * sizeof(float);
  return cudaSuccess;
}

}  // namespace

int norm_in_proj_forward(const NormInProjParams& p, void* stream) {
  GemvLaunch l;
  if (const int rc = gemv_launch(p.act, p.weight, p.dim, p.out_features, p.batch, l); rc != cudaSuccess) return rc;
  if (p.batch == 0) return cudaSuccess;
  const auto st = static_cast<cudaStream_t>(stream);
  if (p.act == Act::kFloat32) {
    norm_in_proj_kernel<float, float><<<l.grid, kThreads, l.smem, st>>>(p);
  } else if (p.x_act == Act::kFloat32) {
    norm_in_proj_kernel<float, __nv_bfloat16><<<l.grid, kThreads, l.smem, st>>>(p);
  } else {
    norm_in_proj_kernel<__nv_bfloat16, __nv_bfloat16><<<l.grid, kThreads, l.smem, st>>>(p);
  }
  return cudaGetLastError();
}

int gated_norm_out_proj_forward(const GatedNormOutProjParams& p, void* stream) {
  if (p.group_size < 1 || p.channels % p.group_size != 0) return cudaErrorInvalidValue;
  GemvLaunch l;
  if (const int rc = gemv_launch(p.act, p.weight, p.channels, p.out_features, p.batch, l); rc != cudaSuccess) return rc;
  if (p.batch == 0) return cudaSuccess;
  const auto st = static_cast<cudaStream_t>(stream);
  if (p.act == Act::kFloat32) {
    gated_norm_out_proj_kernel<float, float><<<l.grid, kThreads, l.smem, st>>>(p);
  } else if (p.residual_act == Act::kFloat32) {
    gated_norm_out_proj_kernel<float, __nv_bfloat16><<<l.grid, kThreads, l.smem, st>>>(p);
  } else {
    gated_norm_out_proj_kernel<__nv_bfloat16, __nv_bfloat16><<<l.grid, kThreads, l.smem, st>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace mambadiff::kernels
