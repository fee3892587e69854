// Device side of kernels/kernel_coverage.h: MAMBADIFF_COVER(branch, condition) in a kernel counts
// the branch once per thread for which the condition holds; MAMBADIFF_COVERAGE_TAKER(name) defines
// the host function that copies and zeroes this file's counters. Each .cu file has its own device
// array (no relocatable device code needed); kernels/kernel_coverage.cu adds them up.
// Without MAMBADIFF_KERNEL_COVERAGE both expand to nothing (the condition is not even evaluated).
#pragma once

#include <cuda_runtime.h>

#include "kernels/kernel_coverage.h"

#ifdef MAMBADIFF_KERNEL_COVERAGE

namespace mambadiff::kernels::coverage {
static __device__ unsigned int g_branch_hits[kKernelBranchCount];
}  // namespace mambadiff::kernels::coverage

#define MAMBADIFF_COVER(branch, condition)                                                                     \
  do {                                                                                                         \
    if (condition) {                                                                                           \
      atomicAdd(&::mambadiff::kernels::coverage::g_branch_hits[static_cast<int>(                               \
                    ::mambadiff::kernels::KernelBranch::branch)],                                              \
                1u);                                                                                           \
    }                                                                                                          \
  } while (0)

#define MAMBADIFF_COVERAGE_TAKER(name)                                                                         \
  namespace mambadiff::kernels::coverage {                                                                     \
  int name(uint32_t* counts) {                                                                                 \
    unsigned int host[kKernelBranchCount];                                                                     \
    const unsigned int zeros[kKernelBranchCount] = {};                                                         \
    cudaError_t e = cudaMemcpyFromSymbol(host, g_branch_hits, sizeof host);                                    \
    if (e == cudaSuccess) e = cudaMemcpyToSymbol(g_branch_hits, zeros, sizeof zeros);                          \
    if (e != cudaSuccess) return e;                                                                            \
    for (int i = 0; i < kKernelBranchCount; ++i) counts[i] += host[i];                                         \
    return cudaSuccess;                                                                                        \
  }                                                                                                            \
  }

#else

#define MAMBADIFF_COVER(branch, condition) \
  do {                                     \
    (void)sizeof(condition);               \
  } while (0)
#define MAMBADIFF_COVERAGE_TAKER(name)

#endif
