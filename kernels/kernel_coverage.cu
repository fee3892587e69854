#include "kernels/kernel_coverage.cuh"

namespace mambadiff::kernels {

#ifdef MAMBADIFF_KERNEL_COVERAGE
namespace coverage {
// Defined by MAMBADIFF_COVERAGE_TAKER in each kernel file.
int take_ssd_chunk_scan(uint32_t* counts);
int take_rms_norm(uint32_t* counts);
int take_causal_conv1d(uint32_t* counts);
int take_discretize_dt(uint32_t* counts);
int take_ssd_chunked_scan(uint32_t* counts);
int take_decode_step(uint32_t* counts);
}  // namespace coverage
#endif

const char* kernel_branch_name(int branch) {
  static const char* const names[kKernelBranchCount] = {
      "scan.head_dim_tail",          "scan.state_tail",        "scan.state_many_rounds", "scan.initial_state",
      "scan.zero_state",             "scan.group_broadcast",   "scan.one_token",         "scan.zero_tokens",
      "scan.decay_underflow",        "scan.decay_one",         "step_backward.state_grad",
      "step_backward.state_tail",    "dt.clamp_low",           "dt.clamp_high",          "dt.softplus_linear",
      "dt.no_upper_limit",           "conv.thread_tail",       "conv.short_segment",     "conv.zero_tokens",
      "conv.no_bias",                "norm.thread_tail",       "gated_norm.grouped",
      "chunked.tail_chunk",          "chunked.dt_transform",   "chunked.many_chunks"};
  return branch >= 0 && branch < kKernelBranchCount ? names[branch] : "?";
}

bool kernel_coverage_enabled() {
#ifdef MAMBADIFF_KERNEL_COVERAGE
  return true;
#else
  return false;
#endif
}

int kernel_coverage_take(uint32_t* counts) {
#ifdef MAMBADIFF_KERNEL_COVERAGE
  cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess) return e;
  for (auto take : {coverage::take_ssd_chunk_scan, coverage::take_rms_norm, coverage::take_causal_conv1d,
                    coverage::take_discretize_dt, coverage::take_ssd_chunked_scan, coverage::take_decode_step}) {
    if (const int r = take(counts); r != cudaSuccess) return r;
  }
  return cudaSuccess;
#else
  (void)counts;
  return cudaErrorNotSupported;
#endif
}

}  // namespace mambadiff::kernels
