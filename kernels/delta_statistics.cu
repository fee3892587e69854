// The real-cache optimizer's statistics of one Δ in one kernel (kernels/fused_kernels.h,
// DeltaStatisticsParams), where the ATen version (optimizer/delta_loop.cpp) launches ~10 small
// kernels per target row: one block per logits row (the target's rank and margin) and one per Δ
// tensor (its squared norm), each writing float64 partials; the last block to finish combines them
// in a fixed order (deterministic) into stats = {loss, worst rank, worst margin, ‖Δ‖₂}.
#include <cmath>
#include <cstdint>

#include "kernels/device_math.cuh"

namespace mambadiff::kernels {

namespace {

constexpr int kThreads = 512;

__device__ unsigned int g_blocks_done;  // zero at module load; the last block sets it back to zero

// NaN-propagating max, as torch's max and maximum.
__device__ __forceinline__ double max_nan(double a, double b) { return (isnan(a) || isnan(b)) ? NAN : fmax(a, b); }
__device__ __forceinline__ double min_nan(double a, double b) { return (isnan(a) || isnan(b)) ? NAN : fmin(a, b); }

// Reduces v over the block with op (fixed order: lanes by shuffles, then warps in order); every
// thread gets the result. `scratch`: 32 doubles of shared memory.
template <typename Op>
__device__ double block_reduce(double v, Op op, double* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  for (int offset = 16; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  double total = scratch[0];
  for (int w = 1; w < warps; ++w) total = op(total, scratch[w]);
  return total;
}

// Per row r: partials[2 r] = rank, [2 r + 1] = margin. Per Δ d: partials[2 rows + d] = Σ Δ².
__global__ void __launch_bounds__(kThreads) delta_statistics_kernel(DeltaStatisticsParams p) {
  __shared__ double scratch[32];
  __shared__ bool last;
  const auto sum = [](double a, double b) { return a + b; };
  if (static_cast<int>(blockIdx.x) < p.rows) {
    const int r = blockIdx.x;
    const float* logits = p.logits[r];
    const int64_t t = p.target[r];
    const double target = logits[t];
    double greater = 0.0, nonfinite = 0.0, best_other = -INFINITY;
    for (int64_t j = threadIdx.x; j < p.vocab; j += blockDim.x) {
      const double v = logits[j];
      greater += v > target ? 1.0 : 0.0;  // strictly greater (a tie: rank 1, margin 0), as rank_of
      nonfinite += isfinite(v) ? 0.0 : 1.0;
      if (j != t) best_other = max_nan(best_other, v);
    }
    greater = block_reduce(greater, sum, scratch);
    nonfinite = block_reduce(nonfinite, sum, scratch);
    best_other = block_reduce(best_other, max_nan, scratch);
    if (threadIdx.x == 0) {
      // A non-finite logit anywhere ranks the target V + 1 (NaN compares false with everything).
      p.partials[2 * r] = nonfinite > 0.0 ? static_cast<double>(p.vocab + 1) : 1.0 + greater;
      p.partials[2 * r + 1] = target - best_other;
    }
  } else {
    const int d = blockIdx.x - p.rows;
    double squares = 0.0;
    for (int64_t i = threadIdx.x; i < p.delta_numel[d]; i += blockDim.x) {
      const double v = p.delta[d][i];
      squares += v * v;
    }
    squares = block_reduce(squares, sum, scratch);
    if (threadIdx.x == 0) p.partials[2 * p.rows + d] = squares;
  }
  // The last block combines: rows and Δs in order.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    last = atomicAdd(&g_blocks_done, 1u) == gridDim.x - 1;
    if (last) {
      g_blocks_done = 0;
      double rank = 0.0, margin = INFINITY, norm2 = 0.0;
      for (int r = 0; r < p.rows; ++r) {
        rank = max_nan(rank, __ldcg(&p.partials[2 * r]));
        margin = min_nan(margin, __ldcg(&p.partials[2 * r + 1]));
      }
      for (int d = 0; d < p.deltas; ++d) norm2 += __ldcg(&p.partials[2 * p.rows + d]);
      p.stats[0] = static_cast<double>(*p.loss);
      p.stats[1] = rank;
      p.stats[2] = margin;
      p.stats[3] = sqrt(norm2);
    }
  }
}

}  // namespace

int delta_statistics(const DeltaStatisticsParams& p, void* stream) {
  if (p.rows < 1 || p.rows > DeltaStatisticsParams::kMaxRows || p.deltas < 0 ||
      p.deltas > DeltaStatisticsParams::kMaxDeltas || p.vocab < 1) {
    return cudaErrorInvalidValue;
  }
  delta_statistics_kernel<<<static_cast<unsigned>(p.rows + p.deltas), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return cudaGetLastError();
}

}  // namespace mambadiff::kernels
