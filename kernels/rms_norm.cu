// rms_norm and gated_rms_norm: forward and backward, one block per row (group).
#include "kernels/device_math.cuh"
#include "kernels/kernel_coverage.cuh"

namespace mambadiff::kernels {

namespace {

using device::block_sum;
using device::load;
using device::round_to;
using device::store;

constexpr int kNormThreads = 256;  // d_model 768..2560 and d_inner up to 5120: a few elements a thread

// out = w * RMSNorm(x); TX: the input's type, T: weight and output type.
template <typename TX, typename T>
__global__ void rms_norm_forward_kernel(const TX* x, const T* w, T* out, float* rstd, int64_t dim, float eps) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const TX* xr = x + row * dim;
  MAMBADIFF_COVER(kNormThreadTail, threadIdx.x == 0 && dim % blockDim.x != 0);
  const float r = device::block_rms_scale([&](int64_t i) { return load(xr, i); }, dim, eps, scratch);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    store(out, row * dim + i, device::rms_normed<T>(load(w, i), load(xr, i), r));
  }
  if (threadIdx.x == 0) rstd[row] = r;
}

// grad_x = r * (w g) - x r^3 / dim * Σ (w g x)
template <typename TX, typename T>
__global__ void rms_norm_backward_kernel(const TX* x, const T* w, const float* rstd, const T* gout, TX* gx,
                                         int64_t dim) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const float r = rstd[row];
  float dot = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    dot += load(w, i) * load(gout, row * dim + i) * load(x, row * dim + i);
  }
  const float k = block_sum(dot, scratch) * r * r * r / static_cast<float>(dim);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const int64_t j = row * dim + i;
    store(gx, j, r * load(w, i) * load(gout, j) - load(x, j) * k);
  }
}

// One block per (row, group): h = y * silu(gate); out = w * (h * rsqrt(mean(h^2) + eps)).
template <typename T>
__global__ void gated_rms_norm_forward_kernel(const float* y, const T* gate, int64_t gate_stride, const T* w, T* out,
                                          float* rstd, int64_t channels, int64_t group_size, float eps) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x, group = blockIdx.y, c0 = group * group_size;
  MAMBADIFF_COVER(kGatedNormGrouped, threadIdx.x == 0 && gridDim.y > 1);
  MAMBADIFF_COVER(kNormThreadTail, threadIdx.x == 0 && group_size % blockDim.x != 0);
  const auto h = [&](int64_t i) {
    const int64_t c = c0 + i;
    return y[row * channels + c] * device::silu(load(gate, row * gate_stride + c));
  };
  const float r = device::block_rms_scale(h, group_size, eps, scratch);
  for (int64_t i = threadIdx.x; i < group_size; i += blockDim.x) {
    const int64_t c = c0 + i;
    store(out, row * channels + c, device::rms_normed<T>(load(w, c), h(i), r));
  }
  if (threadIdx.x == 0) rstd[row * gridDim.y + group] = r;
}

template <typename T>
__global__ void gated_rms_norm_backward_kernel(const float* y, const T* gate, int64_t gate_stride, const T* w,
                                           const float* rstd, const T* gout, float* gy, T* ggate, int64_t channels,
                                           int64_t group_size) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x, group = blockIdx.y, c0 = group * group_size;
  const float r = rstd[row * gridDim.y + group];
  float dot = 0.0f;
  for (int64_t i = threadIdx.x; i < group_size; i += blockDim.x) {
    const int64_t c = c0 + i;
    const float h = y[row * channels + c] * device::silu(load(gate, row * gate_stride + c));
    dot += load(w, c) * load(gout, row * channels + c) * h;
  }
  const float k = block_sum(dot, scratch) * r * r * r / static_cast<float>(group_size);
  for (int64_t i = threadIdx.x; i < group_size; i += blockDim.x) {
    const int64_t c = c0 + i, j = row * channels + c;
    const float z = load(gate, row * gate_stride + c), yv = y[j];
    const float h = yv * device::silu(z);
    const float gh = r * load(w, c) * load(gout, j) - h * k;
    gy[j] = gh * device::silu(z);
    store(ggate, j, gh * yv * device::silu_grad(z));
  }
}

}  // namespace

#define MAMBADIFF_NORM_PAIR(x_act, act, CALL)                                    \
  do {                                                                          \
    if ((x_act) == Act::kFloat32 && (act) == Act::kFloat32) {                   \
      using TX = float;                                                         \
      using T = float;                                                          \
      CALL;                                                                     \
    } else if ((x_act) == Act::kFloat32) {                                      \
      using TX = float;                                                         \
      using T = __nv_bfloat16;                                                  \
      CALL;                                                                     \
    } else {                                                                    \
      using TX = __nv_bfloat16;                                                 \
      using T = __nv_bfloat16;                                                  \
      CALL;                                                                     \
    }                                                                           \
  } while (0)

int rms_norm_forward(Act x_act, Act act, const void* x, const void* weight, void* out, float* rstd, int64_t rows,
                     int64_t dim, float eps, void* stream) {
  if (rows == 0) return cudaSuccess;
  MAMBADIFF_NORM_PAIR(x_act, act,
                      (rms_norm_forward_kernel<TX, T><<<rows, kNormThreads, 0, static_cast<cudaStream_t>(stream)>>>(
                          static_cast<const TX*>(x), static_cast<const T*>(weight), static_cast<T*>(out), rstd, dim,
                          eps)));
  return cudaGetLastError();
}

int rms_norm_backward(Act x_act, Act act, const void* x, const void* weight, const float* rstd, const void* grad_out,
                      void* grad_x, int64_t rows, int64_t dim, void* stream) {
  if (rows == 0) return cudaSuccess;
  MAMBADIFF_NORM_PAIR(x_act, act,
                      (rms_norm_backward_kernel<TX, T><<<rows, kNormThreads, 0, static_cast<cudaStream_t>(stream)>>>(
                          static_cast<const TX*>(x), static_cast<const T*>(weight), rstd,
                          static_cast<const T*>(grad_out), static_cast<TX*>(grad_x), dim)));
  return cudaGetLastError();
}

int gated_rms_norm_forward(Act act, const float* y, const void* gate, int64_t gate_token_stride, const void* weight,
                           void* out, float* rstd, int64_t rows, int64_t channels, int64_t group_size, float eps,
                           void* stream) {
  if (rows == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(channels / group_size));
  MAMBADIFF_DISPATCH_ACT(act, (gated_rms_norm_forward_kernel<T><<<grid, kNormThreads, 0, static_cast<cudaStream_t>(stream)>>>(
                                  y, static_cast<const T*>(gate), gate_token_stride, static_cast<const T*>(weight),
                                  static_cast<T*>(out), rstd, channels, group_size, eps)));
  return cudaGetLastError();
}

int gated_rms_norm_backward(Act act, const float* y, const void* gate, int64_t gate_token_stride, const void* weight,
                            const float* rstd, const void* grad_out, float* grad_y, void* grad_gate, int64_t rows,
                            int64_t channels, int64_t group_size, void* stream) {
  if (rows == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(channels / group_size));
  MAMBADIFF_DISPATCH_ACT(act, (gated_rms_norm_backward_kernel<T><<<grid, kNormThreads, 0, static_cast<cudaStream_t>(stream)>>>(
                                  y, static_cast<const T*>(gate), gate_token_stride, static_cast<const T*>(weight), rstd,
                                  static_cast<const T*>(grad_out), grad_y, static_cast<T*>(grad_gate), channels,
                                  group_size)));
  return cudaGetLastError();
}

}  // namespace mambadiff::kernels

MAMBADIFF_COVERAGE_TAKER(take_rms_norm)
