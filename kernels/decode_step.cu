// The decode step of a layer's mixer in one kernel each way (kernels/fused_kernels.h,
// DecodeStepParams): conv update + SiLU, dt discretization and the state update, which the `cuda`
// path otherwise runs as three kernels (causal_conv1d.cu, discretize_dt.cu, ssd_chunk_scan.cu) —
// at batch 1 each of them is mostly launch and ramp (docs/bench.md: the optimizer step and the
// captured decode are chains of small dependent kernels).
//
// Forward: one block per (batch, head, 8·Rows rows of P), as the decode step of ssd_chunk_scan.cu
// (kernels/state_update_rows.cuh). Each block issues its state loads, convolves the x channels of
// its rows and its group's B and C channels (K multiply-adds each: B and C are recomputed by
// every block of the group rather than exchanged), discretizes its head's dt, then updates its rows.
// The conv window of an x channel belongs to one block, which shifts it in place after reading it;
// the B and C windows are read by every block of the group, so the last of them to finish reading
// (a per-(batch, group) count of finished blocks) shifts them.
//
// Backward: one block per (batch, head), as selective_state_update_backward, with x, B and C
// recomputed from the saved conv pre-activation, dt from the raw row, and the chain through SiLU,
// the conv's newest tap and softplus/clamp applied in place; the last block of a (batch, group)
// adds the heads' B and C gradients in head order (deterministic) and chains them the same way.
#include <cstdint>

#include "kernels/device_math.cuh"
#include "kernels/kernel_coverage.cuh"
#include "kernels/state_update_rows.cuh"

namespace mambadiff::kernels {

namespace {

using device::load;
using device::round_to;
using device::store;

constexpr int kMaxKernel = 8;       // the conv's register window (Mamba2 checkpoints use K = 4)
constexpr int kMaxStateSize = device::kStepMaxStateSize;
constexpr int kBackwardThreads = device::kStepBackwardThreads;
constexpr int kMaxHeadDim = device::kStepMaxHeadDim;

// Blocks of each (batch, group) done reading its B/C conv windows (forward) or done writing their
// heads' B/C gradients (backward). Zero at module load; the last block of a launch sets its entry
// back to zero, so every launch (and every replay of a captured graph) starts from zeros.
__device__ unsigned int g_forward_blocks_done[kDecodeStepMaxBatchGroups];
__device__ unsigned int g_backward_blocks_done[kDecodeStepMaxBatchGroups];

// True in exactly one block of the `blocks` of entry `slot`: the last to arrive. Every thread calls
// it after its last read (forward) or write (backward) that the last block depends on.
__device__ __forceinline__ bool last_block_of(unsigned int* done, int64_t slot, unsigned int blocks, bool* flag) {
  __threadfence();  // this thread's writes reach the device before the count does
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned int ticket = atomicAdd(&done[slot], 1u);
    *flag = ticket == blocks - 1;
    if (*flag) done[slot] = 0;  // every block of this launch has counted
  }
  __syncthreads();
  return *flag;
}

// The conv of channel c at the new token: recent[k] = the window's columns 1..K-1, then the new
// input (the new window, oldest first); returns the pre-activation (fp32, as causal_conv1d.cu).
template <typename T>
__device__ __forceinline__ float conv_pre(const T* window_row, const T* weight_row, const T* bias, int64_t c, float x_new,
                                          int K, float (&recent)[kMaxKernel]) {
  for (int k = 0; k + 1 < K; ++k) recent[k] = load(window_row, k + 1);
  recent[K - 1] = x_new;
  float acc = bias ? load(bias, c) : 0.0f;
  for (int k = 0; k < K; ++k) acc += load(weight_row, k) * recent[k];
  return acc;
}

// Channel of the group's B (i < N) or C (N <= i < 2N) for head group g.
__device__ __forceinline__ int64_t bc_channel(int64_t i, int64_t g, int64_t I, int64_t G, int64_t N) {
  return i < N ? I + g * N + i : I + G * N + g * N + (i - N);
}

template <typename T, int Rows>
__global__ void __launch_bounds__(32 * device::kStepWarps) decode_step_forward_kernel(DecodeStepParams p) {
  constexpr int kRowsPerBlock = Rows * device::kStepWarps;
  __shared__ float x_conv[kRowsPerBlock];       // the block's rows of x after conv + SiLU
  __shared__ float bc_conv[2 * kMaxStateSize];  // the group's B, then C, after conv + SiLU
  __shared__ float dt_decay[2];
  __shared__ bool last;
  const ScanShape& s = p.shape;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, K = static_cast<int>(p.conv_kernel);
  const int64_t H = s.heads, P = s.head_dim, N = s.state_size, G = s.groups, heads_per_group = H / G;
  const int64_t b = blockIdx.x / H, h = blockIdx.x % H, g = h / heads_per_group;
  const int64_t I = H * P, C = I + 2 * G * N;
  const int64_t block_p = int64_t(blockIdx.y) * kRowsPerBlock, p0 = block_p + warp * Rows;
  const int64_t rows_here = P - block_p < kRowsPerBlock ? P - block_p : kRowsPerBlock;
  const int64_t rows_base = (b * H + h) * P * N;
  MAMBADIFF_COVER(kScanHeadDimTail, threadIdx.x == 0 && (int64_t(blockIdx.y) + 1) * kRowsPerBlock > P);

  // 1. The state loads first (warps past P load nothing but take part in the barriers).
  float4 st[Rows][device::kStepRounds];
  device::load_state_rows<Rows>(st, p.state_in, rows_base, p0, P, N, lane);
  if (p.saved_state) device::store_state_rows<Rows>(st, p.saved_state, rows_base, p0, P, N, lane);

  // 2. The conv of the block's x channels (their windows shifted here) and of the group's B and C.
  const T* xbc = static_cast<const T*>(p.xbc_raw) + b * p.xbc_stride;
  T* window = static_cast<T*>(p.window) + b * C * K;
  const T* weight = static_cast<const T*>(p.conv_weight);
  const T* bias = static_cast<const T*>(p.conv_bias);
  MAMBADIFF_COVER(kConvNoBias, threadIdx.x == 0 && bias == nullptr);
  const bool saves_bc_pre = p.saved_pre && h % heads_per_group == 0 && blockIdx.y == 0;  // one block a group
  for (int64_t i = threadIdx.x; i < rows_here + 2 * N; i += blockDim.x) {
    const bool is_x = i < rows_here;
    const int64_t c = is_x ? h * P + block_p + i : bc_channel(i - rows_here, g, I, G, N);
    float recent[kMaxKernel];
    const float pre = conv_pre(window + c * K, weight + c * K, bias, c, load(xbc, c), K, recent);
    // Rounded to the activation dtype, as the conv kernel stores its output for the scan.
    const float out = round_to<T>(device::silu(pre));
    if (is_x) {
      x_conv[i] = out;
      for (int k = 0; k < K; ++k) store(window, c * K + k, recent[k]);
    } else {
      bc_conv[i - rows_here] = out;
    }
    if (p.saved_pre && (is_x || saves_bc_pre)) p.saved_pre[b * C + c] = pre;
  }
  if (threadIdx.x == 0) {
    const float u = load(static_cast<const T*>(p.dt_raw), b * p.dt_stride + h) + p.dt_bias[h], sp = device::softplus(u);
    MAMBADIFF_COVER(kDtClampLow, sp < p.dt_min);
    MAMBADIFF_COVER(kDtClampHigh, sp > p.dt_max);
    MAMBADIFF_COVER(kDtSoftplusLinear, u > 20.0f);
    const float dtv = fminf(fmaxf(sp, p.dt_min), p.dt_max);
    dt_decay[0] = dtv;
    dt_decay[1] = expf(dtv * p.A[h]);
  }

  // 3. The last block of the group done reading shifts the group's B and C windows.
  if (last_block_of(g_forward_blocks_done, b * G + g, static_cast<unsigned int>(heads_per_group * gridDim.y), &last)) {
    for (int64_t i = threadIdx.x; i < 2 * N; i += blockDim.x) {
      const int64_t c = bc_channel(i, g, I, G, N);
      float column[kMaxKernel];
      for (int k = 1; k < K; ++k) column[k] = load(window, c * K + k);
      for (int k = 1; k < K; ++k) store(window, c * K + k - 1, column[k]);
      store(window, c * K + K - 1, load(xbc, c));
    }
  }

  // 4. The state update of the warp's rows.
  if (p0 >= P) return;
  float Bv[device::kStepRounds][4], Cv[device::kStepRounds][4], xv[Rows];
  for (int j = 0; j < device::kStepRounds; ++j) {
    for (int e = 0; e < 4; ++e) {
      const int64_t n = 128 * j + 4 * lane + e;
      Bv[j][e] = n < N ? bc_conv[n] : 0.0f;
      Cv[j][e] = n < N ? bc_conv[N + n] : 0.0f;
    }
  }
#pragma unroll
  for (int r = 0; r < Rows; ++r) xv[r] = p0 + r < P ? x_conv[p0 + r - block_p] : 0.0f;
  device::update_state_rows<Rows>(st, Bv, Cv, xv, dt_decay[0], dt_decay[1], p.D[h], true, heads_per_group > 1, p.state_out,
                                  rows_base, p.y + (b * H + h) * P, p0, P, N, lane);
}

// The backward of the step (selective_state_update_backward's arithmetic, ssd_chunk_scan.cu):
//   s' = a s + dt x B;  y = C.s' + D x;  G = grad_s' + grad_y C;  grad_s = a G;  grad_C = Σ_p grad_y s'
//   grad_B = Σ_p G dt x;  grad_x = Σ_n G dt B + grad_y D;  grad_dt = Σ_{p,n} G (A a s + x B)
// then through SiLU and the conv's newest tap (weight[K-1]) to the raw inputs, and through the clamp
// and softplus to dt_raw, each rounded to the activation dtype where the separate kernels store it.
template <typename T>
__global__ void __launch_bounds__(kBackwardThreads) decode_step_backward_kernel(DecodeStepBackwardParams p) {
  __shared__ float gx_partial[kBackwardThreads / 32][kMaxHeadDim];
  __shared__ float scratch[32];
  __shared__ bool last;
  const ScanShape& s = p.shape;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, K = static_cast<int>(p.conv_kernel);
  const int64_t H = s.heads, P = s.head_dim, N = s.state_size, G = s.groups, heads_per_group = H / G;
  const int64_t b = blockIdx.x / H, h = blockIdx.x % H, g = h / heads_per_group;
  const int64_t I = H * P, C = I + 2 * G * N;
  const float* pre = p.saved_pre + b * C;
  const T* weight = static_cast<const T*>(p.conv_weight);
  const auto conv_out = [&](int64_t c) { return round_to<T>(device::silu(pre[c])); };
  const float u = load(static_cast<const T*>(p.dt_raw), b * p.dt_stride + h) + p.dt_bias[h], sp = device::softplus(u);
  const float dtv = fminf(fmaxf(sp, p.dt_min), p.dt_max), a_h = p.A[h], decay = expf(dtv * a_h);
  float* workspace = p.workspace + (b * H + h) * 2 * N;  // this head's grad_B, then grad_C
  float gdt_acc = 0.0f;
  MAMBADIFF_COVER(kStepBackwardStateGrad, threadIdx.x == 0 && p.grad_state_out != nullptr);
  MAMBADIFF_COVER(kStepBackwardStateTail, threadIdx.x == 0 && N % blockDim.x != 0);
  for (int64_t n0 = 0; n0 < N; n0 += blockDim.x) {  // (N + blockDim - 1) / blockDim rounds, all threads
    const int64_t n = n0 + threadIdx.x;
    const bool live = n < N;
    const float Bn = live ? conv_out(I + g * N + n) : 0.0f, Cn = live ? conv_out(I + G * N + g * N + n) : 0.0f;
    float gB_acc = 0.0f, gC_acc = 0.0f;
    for (int64_t q = 0; q < P; ++q) {
      const float xv = conv_out(h * P + q), gyv = p.grad_y[(b * H + h) * P + q];
      float contrib = 0.0f;
      if (live) {
        const int64_t k = ((b * H + h) * P + q) * N + n;
        contrib = device::step_backward_entry(p.saved_state[k], p.grad_state_out ? p.grad_state_out[k] : 0.0f, gyv, xv, Bn,
                                              Cn, dtv, decay, a_h, &p.grad_state[k], gC_acc, gB_acc, gdt_acc);
      }
      contrib = device::warp_sum(contrib);
      if (lane == 0) gx_partial[warp][q] = (n0 == 0 ? 0.0f : gx_partial[warp][q]) + contrib;
    }
    if (live) {
      workspace[n] = gB_acc;
      workspace[N + n] = gC_acc;
    }
  }
  __syncthreads();
  T* grad_xbc = static_cast<T*>(p.grad_xbc_raw) + b * C;
  for (int64_t q = threadIdx.x; q < P; q += blockDim.x) {
    float total = 0.0f;
    for (int w = 0; w < kBackwardThreads / 32; ++w) total += gx_partial[w][q];
    const int64_t c = h * P + q;
    const float gx = round_to<T>(total + p.grad_y[(b * H + h) * P + q] * p.D[h]);
    store(grad_xbc, c, load(weight, c * K + K - 1) * gx * device::silu_grad(pre[c]));
  }
  const float gdt_total = device::block_sum(gdt_acc, scratch);
  if (threadIdx.x == 0) {
    // torch's clamp passes the gradient where lo <= x <= hi; softplus' derivative is sigmoid.
    const float pass = (sp >= p.dt_min && sp <= p.dt_max) ? 1.0f : 0.0f;
    store(static_cast<T*>(p.grad_dt_raw), b * H + h, gdt_total * pass * (u > 20.0f ? 1.0f : device::sigmoid(u)));
  }

  // The last block of the group: the heads' B and C gradients added in head order, then chained.
  if (last_block_of(g_backward_blocks_done, b * G + g, static_cast<unsigned int>(heads_per_group), &last)) {
    const float* group_terms = p.workspace + (b * H + g * heads_per_group) * 2 * N;
    for (int64_t i = threadIdx.x; i < 2 * N; i += blockDim.x) {
      float total = 0.0f;
      for (int64_t j = 0; j < heads_per_group; ++j) total += __ldcg(&group_terms[j * 2 * N + i]);  // not L1: other SMs wrote it
      const int64_t c = bc_channel(i, g, I, G, N);
      store(grad_xbc, c, load(weight, c * K + K - 1) * round_to<T>(total) * device::silu_grad(pre[c]));
    }
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace

bool decode_step_supported(const ScanShape& s, int64_t conv_kernel) {
  return s.tokens == 1 && conv_kernel >= 1 && conv_kernel <= kMaxKernel && s.state_size % 4 == 0 &&
         s.state_size <= kMaxStateSize && s.head_dim <= kMaxHeadDim && s.groups > 0 && s.heads % s.groups == 0 &&
         s.batch * s.groups <= kDecodeStepMaxBatchGroups;
}

int decode_step_forward(const DecodeStepParams& p, void* stream) {
  if (!decode_step_supported(p.shape, p.conv_kernel) || !aligned16(p.state_in) || !aligned16(p.state_out) ||
      (p.saved_state && !aligned16(p.saved_state))) {
    return cudaErrorInvalidValue;
  }
  if (p.shape.batch * p.shape.heads * p.shape.head_dim == 0) return cudaSuccess;
  const auto st = static_cast<cudaStream_t>(stream);
  if (device::step_many_rows(p.shape.batch, p.shape.heads)) {
    MAMBADIFF_DISPATCH_ACT(p.act, (decode_step_forward_kernel<T, 8><<<device::step_grid<8>(p.shape), 32 * device::kStepWarps, 0, st>>>(p)));
  } else {
    MAMBADIFF_DISPATCH_ACT(p.act, (decode_step_forward_kernel<T, 4><<<device::step_grid<4>(p.shape), 32 * device::kStepWarps, 0, st>>>(p)));
  }
  return cudaGetLastError();
}

int decode_step_backward(const DecodeStepBackwardParams& p, void* stream) {
  if (!decode_step_supported(p.shape, p.conv_kernel)) return cudaErrorInvalidValue;
  if (p.shape.batch * p.shape.heads == 0) return cudaSuccess;
  MAMBADIFF_DISPATCH_ACT(p.act, (decode_step_backward_kernel<T><<<static_cast<unsigned>(p.shape.batch * p.shape.heads),
                                                                   kBackwardThreads, 0, static_cast<cudaStream_t>(stream)>>>(p)));
  return cudaGetLastError();
}

}  // namespace mambadiff::kernels

MAMBADIFF_COVERAGE_TAKER(take_decode_step)
