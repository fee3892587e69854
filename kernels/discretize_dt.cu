// discretize_dt: dt = clamp(softplus(dt_raw + dt_bias), lo, hi), forward and backward, one thread
// per (row, head).
#include "kernels/device_math.cuh"
#include "kernels/kernel_coverage.cuh"

namespace mambadiff::kernels {

namespace {

using device::load;
using device::store;

using device::softplus;

template <typename T>
__global__ void discretize_dt_forward_kernel(const T* raw, int64_t stride, const float* bias, float* dt, int64_t rows, int64_t heads,
                                  float lo, float hi) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= rows * heads) return;
  const int64_t row = i / heads, h = i % heads;
  const float u = load(raw, row * stride + h) + bias[h], sp = softplus(u);
  MAMBADIFF_COVER(kDtClampLow, sp < lo);
  MAMBADIFF_COVER(kDtClampHigh, sp > hi);
  MAMBADIFF_COVER(kDtSoftplusLinear, u > 20.0f);
  MAMBADIFF_COVER(kDtNoUpperLimit, i == 0 && isinf(hi));
  dt[i] = fminf(fmaxf(sp, lo), hi);
}

template <typename T>
__global__ void discretize_dt_backward_kernel(const T* raw, int64_t stride, const float* bias, const float* gdt, T* graw,
                                   int64_t rows, int64_t heads, float lo, float hi) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= rows * heads) return;
  const int64_t row = i / heads, h = i % heads;
  const float u = load(raw, row * stride + h) + bias[h];
  const float sp = softplus(u);
  // torch's clamp passes the gradient where lo <= x <= hi; softplus' derivative is sigmoid.
  const float pass = (sp >= lo && sp <= hi) ? 1.0f : 0.0f;
  store(graw, i, gdt[i] * pass * (u > 20.0f ? 1.0f : device::sigmoid(u)));
}

}  // namespace

int discretize_dt_forward(Act act, const void* dt_raw, int64_t token_stride, const float* dt_bias, float* dt,
                          int64_t rows, int64_t heads, float lo, float hi, void* stream) {
  if (rows * heads == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  MAMBADIFF_DISPATCH_ACT(act, (discretize_dt_forward_kernel<T><<<device::ceil_div(rows * heads, kThreads), kThreads, 0,
                                                      static_cast<cudaStream_t>(stream)>>>(
                                  static_cast<const T*>(dt_raw), token_stride, dt_bias, dt, rows,
                                  heads, lo, hi)));
  return cudaGetLastError();
}

int discretize_dt_backward(Act act, const void* dt_raw, int64_t token_stride, const float* dt_bias,
                           const float* grad_dt, void* grad_raw, int64_t rows, int64_t heads, float lo, float hi,
                           void* stream) {
  if (rows * heads == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  MAMBADIFF_DISPATCH_ACT(act, (discretize_dt_backward_kernel<T><<<device::ceil_div(rows * heads, kThreads), kThreads, 0,
                                                       static_cast<cudaStream_t>(stream)>>>(
                                  static_cast<const T*>(dt_raw), token_stride, dt_bias, grad_dt,
                                  static_cast<T*>(grad_raw), rows, heads, lo, hi)));
  return cudaGetLastError();
}

}  // namespace mambadiff::kernels

MAMBADIFF_COVERAGE_TAKER(take_discretize_dt)
