// The one-token state update at the state's copy bandwidth, shared by the decode step of the scan
// (ssd_chunk_scan.cu's decode_step_kernel: x, B, C already convolved) and the fused decode step
// (decode_step.cu: conv + dt + state update in one kernel).
//
// A warp owns `Rows` consecutive rows p of one (batch, head) state [P, N]; lane j holds entries
// n = 128 r + 4 j .. + 3 of each row (one 16-byte load and store per round r), so a warp has
// Rows × 512 bytes of state in flight. Callers issue load_state_rows first (the bytes that bound
// the kernel; nothing they need waits on dt, B or C), then update_state_rows:
//   s' = exp(dt A) s + (dt x) B;   y = C · s' + D x   (a fixed-order fp32 sum: deterministic)
// Requires N % 4 == 0, N <= 256 and 16-byte aligned state rows.
#pragma once

#include "kernels/device_math.cuh"
#include "kernels/kernel_coverage.cuh"

namespace mambadiff::kernels::device {

constexpr int kStepRounds = 2;  // N <= 2 rounds × 128 = 256 (Mamba2 checkpoints use 64 or 128)
constexpr int kStepMaxStateSize = kStepRounds * 128;

// st[r][j] = state row p0 + r, entries 128 j + 4 lane ..; zeros past P or N, or when `state` is null.
// `rows_base` indexes row p = 0 of this (batch, head): ((b H + h) P) N.
template <int Rows>
__device__ __forceinline__ void load_state_rows(float4 (&st)[Rows][kStepRounds], const float* state, int64_t rows_base,
                                                int64_t p0, int64_t P, int64_t N, int lane) {
#pragma unroll
  for (int r = 0; r < Rows; ++r) {
#pragma unroll
    for (int j = 0; j < kStepRounds; ++j) {
      const int64_t p = p0 + r, n = 128 * j + 4 * lane;
      st[r][j] = (p < P && n < N && state) ? *reinterpret_cast<const float4*>(&state[rows_base + p * N + n])
                                           : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
  }
}

// Writes st (as loaded) to `copy` (the input state kept for a backward); rows past P are skipped.
template <int Rows>
__device__ __forceinline__ void store_state_rows(const float4 (&st)[Rows][kStepRounds], float* copy, int64_t rows_base,
                                                 int64_t p0, int64_t P, int64_t N, int lane) {
#pragma unroll
  for (int r = 0; r < Rows; ++r) {
#pragma unroll
    for (int j = 0; j < kStepRounds; ++j) {
      const int64_t p = p0 + r, n = 128 * j + 4 * lane;
      if (p < P && n < N) *reinterpret_cast<float4*>(&copy[rows_base + p * N + n]) = st[r][j];
    }
  }
}

// Bv/Cv[j][e]: B and C at n = 128 j + 4 lane + e (zeros past N); xv[r]: x at row p0 + r.
// `state_out` may be the state st was loaded from: each lane writes exactly what it read.
// y_rows: y of row p = 0 of this (batch, head).
template <int Rows>
__device__ __forceinline__ void update_state_rows(float4 (&st)[Rows][kStepRounds], const float (&Bv)[kStepRounds][4],
                                                  const float (&Cv)[kStepRounds][4], const float (&xv)[Rows], float dtv,
                                                  float decay, float d_h, bool has_initial, bool group_broadcast,
                                                  float* state_out, int64_t rows_base, float* y_rows, int64_t p0,
                                                  int64_t P, int64_t N, int lane) {
#pragma unroll
  for (int r = 0; r < Rows; ++r) {
    const int64_t p = p0 + r;
    if (p >= P) break;  // warp-uniform
    // Counted once per row, as the sequential kernel counts once per warp (one row each).
    MAMBADIFF_COVER(kScanStateTail, lane == 0 && N % 32 != 0);
    MAMBADIFF_COVER(kScanStateManyRounds, lane == 0 && N > 32);
    MAMBADIFF_COVER(kScanInitialState, lane == 0 && has_initial);
    MAMBADIFF_COVER(kScanZeroState, lane == 0 && !has_initial);
    MAMBADIFF_COVER(kScanGroupBroadcast, lane == 0 && group_broadcast);
    MAMBADIFF_COVER(kScanOneToken, lane == 0);
    MAMBADIFF_COVER(kScanDecayUnderflow, lane == 0 && decay == 0.0f);
    MAMBADIFF_COVER(kScanDecayOne, lane == 0 && decay == 1.0f);
    const float dx = dtv * xv[r];
    float acc = 0.0f;
#pragma unroll
    for (int j = 0; j < kStepRounds; ++j) {
      const int64_t n = 128 * j + 4 * lane;
      if (n >= N) continue;
      float4& v = st[r][j];
      v.x = decay * v.x + dx * Bv[j][0];
      v.y = decay * v.y + dx * Bv[j][1];
      v.z = decay * v.z + dx * Bv[j][2];
      v.w = decay * v.w + dx * Bv[j][3];
      acc += Cv[j][0] * v.x + Cv[j][1] * v.y + Cv[j][2] * v.z + Cv[j][3] * v.w;
      *reinterpret_cast<float4*>(&state_out[rows_base + p * N + n]) = v;
    }
    acc = warp_sum(acc);
    if (lane == 0) y_rows[p] = acc + d_h * xv[r];
  }
}

// The backward of one state entry of the step, s' = a s + dt x B, y = C · s' + D x, with G = grad_s'
// + grad_y C the total gradient on s': writes grad_s = a G, adds this entry's terms to grad_C
// (grad_y s'), grad_B (G dt x) and grad_dt (G (A a s + x B)), and returns its grad_x term (G dt B).
__device__ __forceinline__ float step_backward_entry(float s_old, float grad_s_new, float grad_y, float x, float B, float C,
                                                     float dt, float decay, float A, float* grad_s, float& grad_C,
                                                     float& grad_B, float& grad_dt) {
  const float s_new = decay * s_old + dt * x * B;
  const float G = grad_s_new + grad_y * C;
  *grad_s = decay * G;
  grad_C += grad_y * s_new;
  grad_B += G * dt * x;
  grad_dt += G * (A * decay * s_old + x * B);
  return G * dt * B;
}

// Rows a warp owns: 8 where there are enough (batch, head) pairs to fill the card with them (the
// state update at batch 64 × 80 heads: 84 % of the copy bandwidth with 8, 75 % with 4, H200
// 2026-12-02), 4 otherwise (batch 1: more blocks in flight).
constexpr int kStepWarps = 8;
constexpr int64_t kManyRowsThreshold = 1024;  // batch × heads
inline bool step_many_rows(int64_t batch, int64_t heads) { return batch * heads >= kManyRowsThreshold; }

// The grid of a step kernel whose warps own `Rows` rows: one block per (batch, head) and 8·Rows rows of P.
template <int Rows>
dim3 step_grid(const ScanShape& s) {
  return dim3(static_cast<unsigned>(s.batch * s.heads), static_cast<unsigned>(ceil_div(s.head_dim, Rows * kStepWarps)));
}

// The step's backward kernels (selective_state_update_backward, the fused decode step's): one block
// of kStepBackwardThreads per (batch, head); each warp's grad_x partial sums over P in shared memory.
constexpr int kStepBackwardThreads = 128;
constexpr int kStepMaxHeadDim = 256;

}  // namespace mambadiff::kernels::device
