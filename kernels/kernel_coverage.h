// Branch coverage from inside the fused CUDA kernels (issue 10 §6), for the fuzz targets: in a build
// with MAMBADIFF_KERNEL_COVERAGE defined (cmake -DMAMBADIFF_KERNEL_COVERAGE=ON), the kernels count
// the branches their blocks take into a small device array — tail tiles, a group shared by several
// heads, dt clamp hits, zero-length segments, ... (KernelBranch below) — and
// kernel_coverage_take() copies the counts back after an execution, for the fuzz target to hand to
// libFuzzer as extra counters. Without the definition the counting compiles to nothing (the
// macros of kernels/kernel_coverage.cuh expand to no code and no device array exists) and
// kernel_coverage_take() reports that it is off.
#pragma once

#include <cstdint>

namespace mambadiff::kernels {

enum class KernelBranch : int {
  // ssd_chunk_scan_forward
  kScanHeadDimTail,       // a block's last warps have no head_dim row (head_dim % 4 != 0)
  kScanStateTail,         // the state's last round leaves lanes idle (state_size % 32 != 0)
  kScanStateManyRounds,   // state_size > 32: a lane holds several state entries
  kScanInitialState,      // a given initial state (continue, decode)
  kScanZeroState,         // no initial state (prefill)
  kScanGroupBroadcast,    // one B/C group shared by several heads (heads / groups > 1)
  kScanOneToken,          // a one-token segment (the decode step)
  kScanZeroTokens,        // a zero-length segment: the state passes through unchanged
  kScanDecayUnderflow,    // exp(dt A) == 0: the state is forgotten within one token
  kScanDecayOne,          // exp(dt A) == 1: dt A == 0 (dt clamped to 0, or A == 0)
  // selective_state_update_backward
  kStepBackwardStateGrad,  // a gradient on the new state flows in (gs_out given)
  kStepBackwardStateTail,  // the state's last round leaves threads idle
  // discretize_dt_forward / backward
  kDtClampLow,           // softplus(dt + bias) < lo: clamped up
  kDtClampHigh,          // softplus(dt + bias) > hi: clamped down
  kDtSoftplusLinear,     // dt + bias > 20: softplus is the identity
  kDtNoUpperLimit,       // hi is +inf (time_step_limit (0, inf))
  // causal_conv1d_forward / backward
  kConvThreadTail,       // the last block has threads past batch * channels
  kConvShortSegment,     // tokens < kernel_size - 1: part of the old window survives the segment
  kConvZeroTokens,       // a zero-length segment: the window passes through unchanged
  kConvNoBias,           // a conv without bias
  // rms_norm / gated_rms_norm
  kNormThreadTail,       // dim % threads != 0: the last round leaves threads idle
  kGatedNormGrouped,     // the gated norm over several groups (n_groups > 1)
  // ssd_chunked_scan_forward
  kChunkedTailChunk,     // the last chunk is shorter than chunk_size (T % chunk_size != 0)
  kChunkedDtTransform,   // dt bias or softplus applied inside the scan
  kChunkedManyChunks,    // a state passed from chunk to chunk
  kCount
};
inline constexpr int kKernelBranchCount = static_cast<int>(KernelBranch::kCount);

// "scan.head_dim_tail", ...: the name of a branch in logs and docs/fuzz.md.
const char* kernel_branch_name(int branch);

// True in a build with MAMBADIFF_KERNEL_COVERAGE.
bool kernel_coverage_enabled();

// Adds the device counts since the last call into counts[kKernelBranchCount] and zeroes them on the
// device (it synchronizes the device first). Returns a cudaError_t as int; cudaErrorNotSupported
// without MAMBADIFF_KERNEL_COVERAGE.
int kernel_coverage_take(uint32_t* counts);

}  // namespace mambadiff::kernels
