// ssd_chunk_scan (the op of engine/aten_ops.h, computed by a sequential selective scan) with
// initial and final states (prefill, continue, decode) and the backward
// of the one-token decode step.
//
// Forward: one warp per (batch, head, p); lane j holds the state entries n = j, j + 32, ... in
// registers and walks the tokens in order, so every path-visible number is a fixed-order fp32
// sum (deterministic). Sequential in time: a chunked (SSD) formulation would be faster for long
// prompts; the product's hot loop (the optimizer, generation) is the T = 1 decode.
#include <cstdint>

#include "kernels/device_math.cuh"
#include "kernels/kernel_coverage.cuh"
#include "kernels/state_update_rows.cuh"

namespace mambadiff::kernels {

namespace {

using device::load;
using device::store;

constexpr int kWarpsPerBlock = 4;
constexpr int kMaxStatePerLane = 8;  // N <= 8 * 32 = 256 (Mamba2 checkpoints use 64 or 128)

template <typename T>
__global__ void ssd_chunk_scan_forward_kernel(ScanShape s, const T* x, const T* Bm, const T* Cm, int64_t stride, const float* dt,
                                    const float* A, const float* D, const float* initial, float* y, float* final_state) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t bh = blockIdx.x, b = bh / s.heads, h = bh % s.heads;
  const int64_t p = int64_t(blockIdx.y) * kWarpsPerBlock + warp;
  MAMBADIFF_COVER(kScanHeadDimTail, threadIdx.x == 0 && (int64_t(blockIdx.y) + 1) * kWarpsPerBlock > s.head_dim);
  if (p >= s.head_dim) return;
  const int64_t g = h / (s.heads / s.groups), N = s.state_size, P = s.head_dim, H = s.heads;
  // Counted once per warp (one (batch, head, p) row).
  MAMBADIFF_COVER(kScanStateTail, lane == 0 && N % 32 != 0);
  MAMBADIFF_COVER(kScanStateManyRounds, lane == 0 && N > 32);
  MAMBADIFF_COVER(kScanInitialState, lane == 0 && initial != nullptr);
  MAMBADIFF_COVER(kScanZeroState, lane == 0 && initial == nullptr);
  MAMBADIFF_COVER(kScanGroupBroadcast, lane == 0 && s.heads / s.groups > 1);
  MAMBADIFF_COVER(kScanOneToken, lane == 0 && s.tokens == 1);
  MAMBADIFF_COVER(kScanZeroTokens, lane == 0 && s.tokens == 0);
  const int64_t state_base = ((b * H + h) * P + p) * N;
  float state[kMaxStatePerLane];
  for (int i = 0; i < kMaxStatePerLane; ++i) {
    const int64_t n = lane + 32 * i;
    state[i] = (n < N && initial) ? initial[state_base + n] : 0.0f;
  }
  const float a_h = A[h], d_h = D[h];
  for (int64_t t = 0; t < s.tokens; ++t) {
    const int64_t row = (b * s.tokens + t) * stride;  // this token's conv-output row
    const float xv = load(x, row + h * P + p);
    const float dtv = dt[(b * s.tokens + t) * H + h];
    const float decay = expf(dtv * a_h);
    MAMBADIFF_COVER(kScanDecayUnderflow, lane == 0 && decay == 0.0f);
    MAMBADIFF_COVER(kScanDecayOne, lane == 0 && decay == 1.0f);
    float acc = 0.0f;
    for (int i = 0; i < kMaxStatePerLane; ++i) {
      const int64_t n = lane + 32 * i;
      if (n >= N) break;
      state[i] = decay * state[i] + dtv * xv * load(Bm, row + g * N + n);
      acc += load(Cm, row + g * N + n) * state[i];
    }
    acc = device::warp_sum(acc);
    if (lane == 0) y[((b * s.tokens + t) * H + h) * P + p] = acc + d_h * xv;
  }
  for (int i = 0; i < kMaxStatePerLane; ++i) {
    const int64_t n = lane + 32 * i;
    if (n < N) final_state[state_base + n] = state[i];
  }
}

// The decode step (T = 1) when state_size % 4 == 0, at the state's copy bandwidth
// (kernels/state_update_rows.cuh): a warp owns `Rows` rows p of one (batch, head); B and C are read
// once per warp for all its rows. The same arithmetic as the sequential kernel at T = 1 (the
// fixed-order warp sum differs only in which lane holds which n).
template <typename T, int Rows>
__global__ void __launch_bounds__(32 * device::kStepWarps) decode_step_kernel(ScanShape s, const T* x, const T* Bm, const T* Cm,
                                                                             int64_t stride, const float* dt, const float* A,
                                                                             const float* D, const float* initial, float* y,
                                                                             float* final_state) {
  constexpr int kRowsPerBlock = Rows * device::kStepWarps;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t bh = blockIdx.x, b = bh / s.heads, h = bh % s.heads;
  const int64_t P = s.head_dim, N = s.state_size, H = s.heads, g = h / (s.heads / s.groups);
  const int64_t p0 = int64_t(blockIdx.y) * kRowsPerBlock + warp * Rows;
  MAMBADIFF_COVER(kScanHeadDimTail, threadIdx.x == 0 && (int64_t(blockIdx.y) + 1) * kRowsPerBlock > P);
  if (p0 >= P) return;
  const int64_t rows_base = (b * H + h) * P * N;
  float4 st[Rows][device::kStepRounds];
  device::load_state_rows<Rows>(st, initial, rows_base, p0, P, N, lane);
  const int64_t row = b * stride;  // T == 1: batch b's only row
  const float dtv = dt[b * H + h], decay = expf(dtv * A[h]);
  float Bv[device::kStepRounds][4], Cv[device::kStepRounds][4], xv[Rows];
  for (int j = 0; j < device::kStepRounds; ++j) {
    for (int e = 0; e < 4; ++e) {
      const int64_t n = 128 * j + 4 * lane + e;
      Bv[j][e] = n < N ? load(Bm, row + g * N + n) : 0.0f;
      Cv[j][e] = n < N ? load(Cm, row + g * N + n) : 0.0f;
    }
  }
#pragma unroll
  for (int r = 0; r < Rows; ++r) xv[r] = p0 + r < P ? load(x, row + h * P + p0 + r) : 0.0f;
  device::update_state_rows<Rows>(st, Bv, Cv, xv, dtv, decay, D[h], initial != nullptr, s.heads / s.groups > 1, final_state,
                                  rows_base, y + (b * H + h) * P, p0, P, N, lane);
}

// One block per (batch, head); thread j owns state entries n = j, j + blockDim, ... and walks p.
//   s' = a s + dt x B;  y = C.s' + D x;  G = grad_s' + grad_y C (the total gradient on s')
//   grad_s = a G;  grad_C = Σ_p grad_y s';  grad_B = Σ_p G dt x;  grad_x = Σ_n G dt B + grad_y D
//   grad_dt = Σ_{p,n} G (A a s + x B)
constexpr int kBackwardThreads = device::kStepBackwardThreads;
constexpr int kMaxHeadDim = device::kStepMaxHeadDim;

template <typename T>
__global__ void selective_state_update_backward_kernel(ScanShape s, const T* x, const T* Bm, const T* Cm, int64_t stride, const float* dt,
                                     const float* A, const float* D, const float* state, const float* gy,
                                     const float* gs_out, T* gx, float* gdt, float* gB, float* gC, float* gs) {
  __shared__ float gx_partial[kBackwardThreads / 32][kMaxHeadDim];
  __shared__ float scratch[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t bh = blockIdx.x, b = bh / s.heads, h = bh % s.heads;
  const int64_t H = s.heads, P = s.head_dim, N = s.state_size, g = h / (H / s.groups);
  const int64_t row = b * stride;  // T == 1: batch b's only row
  const float dtv = dt[b * H + h], a_h = A[h], decay = expf(dtv * a_h);
  float gdt_acc = 0.0f;
  MAMBADIFF_COVER(kStepBackwardStateGrad, threadIdx.x == 0 && gs_out != nullptr);
  MAMBADIFF_COVER(kStepBackwardStateTail, threadIdx.x == 0 && N % blockDim.x != 0);
  for (int64_t n0 = 0; n0 < N; n0 += blockDim.x) {  // (N + blockDim - 1) / blockDim rounds, all threads
    const int64_t n = n0 + threadIdx.x;
    const bool live = n < N;
    const float Bn = live ? load(Bm, row + g * N + n) : 0.0f, Cn = live ? load(Cm, row + g * N + n) : 0.0f;
    float gB_acc = 0.0f, gC_acc = 0.0f;
    for (int64_t p = 0; p < P; ++p) {
      const float xv = load(x, row + h * P + p), gyv = gy[(b * H + h) * P + p];
      float contrib = 0.0f;
      if (live) {
        const int64_t k = ((b * H + h) * P + p) * N + n;
        contrib = device::step_backward_entry(state[k], gs_out ? gs_out[k] : 0.0f, gyv, xv, Bn, Cn, dtv, decay, a_h, &gs[k],
                                              gC_acc, gB_acc, gdt_acc);
      }
      contrib = device::warp_sum(contrib);
      if (lane == 0) gx_partial[warp][p] = (n0 == 0 ? 0.0f : gx_partial[warp][p]) + contrib;
    }
    if (live) {
      gB[(b * H + h) * N + n] = gB_acc;
      gC[(b * H + h) * N + n] = gC_acc;
    }
  }
  __syncthreads();
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) {
    float total = 0.0f;
    for (int w = 0; w < kBackwardThreads / 32; ++w) total += gx_partial[w][p];
    store(gx, (b * H + h) * P + p, total + gy[(b * H + h) * P + p] * D[h]);
  }
  const float gdt_total = device::block_sum(gdt_acc, scratch);
  if (threadIdx.x == 0) gdt[b * H + h] = gdt_total;
}

}  // namespace

int ssd_chunk_scan_forward(Act act, const ScanShape& s, const void* x, const void* Bm, const void* Cm,
                     int64_t xbc_token_stride, const float* dt, const float* A, const float* D, const float* initial,
                     float* y, float* final_state, void* stream) {
  if (s.state_size > 32 * kMaxStatePerLane || s.groups <= 0 || s.heads % s.groups != 0) return cudaErrorInvalidValue;
  if (s.batch * s.heads * s.head_dim == 0) return cudaSuccess;
  const bool aligned16 = ((reinterpret_cast<uintptr_t>(initial) | reinterpret_cast<uintptr_t>(final_state)) & 15) == 0;
  if (s.tokens == 1 && s.state_size % 4 == 0 && aligned16) {  // the decode step: 16-byte state rows (decode_step_kernel)
    const auto st = static_cast<cudaStream_t>(stream);
    if (device::step_many_rows(s.batch, s.heads)) {
      MAMBADIFF_DISPATCH_ACT(act, (decode_step_kernel<T, 8><<<device::step_grid<8>(s), 32 * device::kStepWarps, 0, st>>>(
                                      s, static_cast<const T*>(x), static_cast<const T*>(Bm), static_cast<const T*>(Cm),
                                      xbc_token_stride, dt, A, D, initial, y, final_state)));
    } else {
      MAMBADIFF_DISPATCH_ACT(act, (decode_step_kernel<T, 4><<<device::step_grid<4>(s), 32 * device::kStepWarps, 0, st>>>(
                                      s, static_cast<const T*>(x), static_cast<const T*>(Bm), static_cast<const T*>(Cm),
                                      xbc_token_stride, dt, A, D, initial, y, final_state)));
    }
    return cudaGetLastError();
  }
  const dim3 grid(static_cast<unsigned>(s.batch * s.heads), static_cast<unsigned>(device::ceil_div(s.head_dim, kWarpsPerBlock)));
  MAMBADIFF_DISPATCH_ACT(act, (ssd_chunk_scan_forward_kernel<T><<<grid, 32 * kWarpsPerBlock, 0, static_cast<cudaStream_t>(stream)>>>(
                                  s, static_cast<const T*>(x), static_cast<const T*>(Bm), static_cast<const T*>(Cm),
                                  xbc_token_stride, dt, A, D, initial, y, final_state)));
  return cudaGetLastError();
}

int selective_state_update_backward(Act act, const ScanShape& s, const void* x, const void* Bm, const void* Cm,
                      int64_t xbc_token_stride, const float* dt, const float* A, const float* D, const float* state,
                      const float* grad_y, const float* grad_state_out, void* grad_x, float* grad_dt,
                      float* grad_B_head, float* grad_C_head, float* grad_state, void* stream) {
  if (s.tokens != 1 || s.head_dim > kMaxHeadDim || s.groups <= 0 || s.heads % s.groups != 0) return cudaErrorInvalidValue;
  if (s.batch * s.heads == 0) return cudaSuccess;
  MAMBADIFF_DISPATCH_ACT(act, (selective_state_update_backward_kernel<T><<<static_cast<unsigned>(s.batch * s.heads), kBackwardThreads, 0,
                                                         static_cast<cudaStream_t>(stream)>>>(
                                  s, static_cast<const T*>(x), static_cast<const T*>(Bm), static_cast<const T*>(Cm),
                                  xbc_token_stride, dt, A, D, state, grad_y, grad_state_out,
                                  static_cast<T*>(grad_x), grad_dt, grad_B_head, grad_C_head, grad_state)));
  return cudaGetLastError();
}

}  // namespace mambadiff::kernels

MAMBADIFF_COVERAGE_TAKER(take_ssd_chunk_scan)
