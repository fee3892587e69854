// Causal depthwise conv1d + SiLU over a cached window: one thread per (batch, channel), walking
// the tokens with the K most recent inputs in registers (prefill, continue and the decode update
// alike: the update is T = 1).
#include "kernels/device_math.cuh"
#include "kernels/kernel_coverage.cuh"

namespace mambadiff::kernels {

namespace {

using device::load;
using device::store;

constexpr int kMaxKernel = 8;    // Mamba2 checkpoints use K = 4
constexpr int kConvThreads = 128;

template <typename T>
__global__ void causal_conv1d_forward_kernel(const T* x, int64_t x_stride, const T* window, const T* w, const T* bias, T* out,
                                    T* new_window, float* pre, int64_t batch, int64_t tokens, int64_t channels,
                                    int kernel_size) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  MAMBADIFF_COVER(kConvThreadTail, threadIdx.x == 0 && (int64_t(blockIdx.x) + 1) * blockDim.x > batch * channels);
  if (i >= batch * channels) return;
  const int64_t b = i / channels, c = i % channels;
  // Counted once per (batch, channel).
  MAMBADIFF_COVER(kConvShortSegment, tokens > 0 && tokens < kernel_size - 1);
  MAMBADIFF_COVER(kConvZeroTokens, tokens == 0);
  MAMBADIFF_COVER(kConvNoBias, bias == nullptr);
  float recent[kMaxKernel];  // recent[k]: the input k steps before the newest, oldest at kernel_size - 1
  float weight[kMaxKernel];
  for (int k = 0; k < kernel_size; ++k) {
    recent[k] = load(window, (b * channels + c) * kernel_size + k);  // window column k, oldest first
    weight[k] = load(w, c * kernel_size + k);
  }
  const float b0 = bias ? load(bias, c) : 0.0f;
  for (int64_t t = 0; t < tokens; ++t) {
    for (int k = 0; k + 1 < kernel_size; ++k) recent[k] = recent[k + 1];  // shift out the oldest
    recent[kernel_size - 1] = load(x, (b * tokens + t) * x_stride + c);
    float acc = b0;
    for (int k = 0; k < kernel_size; ++k) acc += weight[k] * recent[k];
    const int64_t o = (b * tokens + t) * channels + c;
    if (pre) pre[o] = acc;
    store(out, o, device::silu(acc));
  }
  for (int k = 0; k < kernel_size; ++k) store(new_window, (b * channels + c) * kernel_size + k, recent[k]);
}

// x[s] feeds out[t] for t = s + K - 1 - k (k = 0..K-1) through weight[k].
template <typename T>
__global__ void causal_conv1d_backward_kernel(const T* gout, const float* pre, const T* w, T* gx, int64_t batch, int64_t tokens,
                                     int64_t channels, int kernel_size) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= batch * channels) return;
  const int64_t b = i / channels, c = i % channels;
  for (int64_t s = 0; s < tokens; ++s) {
    float acc = 0.0f;
    for (int k = 0; k < kernel_size; ++k) {
      const int64_t t = s + kernel_size - 1 - k;
      if (t >= tokens) continue;
      const int64_t o = (b * tokens + t) * channels + c;
      acc += load(w, c * kernel_size + k) * load(gout, o) * device::silu_grad(pre[o]);
    }
    store(gx, (b * tokens + s) * channels + c, acc);
  }
}

}  // namespace

int causal_conv1d_forward(Act act, const void* x, int64_t x_token_stride, const void* window, const void* weight,
                          const void* bias, void* out, void* new_window, float* pre, int64_t batch, int64_t tokens,
                          int64_t channels, int64_t kernel_size, void* stream) {
  if (kernel_size < 1 || kernel_size > kMaxKernel) return cudaErrorInvalidValue;
  if (batch * channels == 0) return cudaSuccess;
  MAMBADIFF_DISPATCH_ACT(act, (causal_conv1d_forward_kernel<T><<<device::ceil_div(batch * channels, kConvThreads), kConvThreads,
                                                        0, static_cast<cudaStream_t>(stream)>>>(
                                  static_cast<const T*>(x), x_token_stride, static_cast<const T*>(window),
                                  static_cast<const T*>(weight), static_cast<const T*>(bias), static_cast<T*>(out),
                                  static_cast<T*>(new_window), pre, batch, tokens, channels,
                                  static_cast<int>(kernel_size))));
  return cudaGetLastError();
}

int causal_conv1d_backward(Act act, const void* grad_out, const float* pre, const void* weight, void* grad_x,
                           int64_t batch, int64_t tokens, int64_t channels, int64_t kernel_size, void* stream) {
  if (kernel_size < 1 || kernel_size > kMaxKernel) return cudaErrorInvalidValue;
  if (batch * channels == 0) return cudaSuccess;
  MAMBADIFF_DISPATCH_ACT(act, (causal_conv1d_backward_kernel<T><<<device::ceil_div(batch * channels, kConvThreads), kConvThreads,
                                                         0, static_cast<cudaStream_t>(stream)>>>(
                                  static_cast<const T*>(grad_out), pre, static_cast<const T*>(weight),
                                  static_cast<T*>(grad_x), batch, tokens, channels, static_cast<int>(kernel_size))));
  return cudaGetLastError();
}

}  // namespace mambadiff::kernels

MAMBADIFF_COVERAGE_TAKER(take_causal_conv1d)
