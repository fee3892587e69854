// The CUDA kernels' branch counters (kernels/kernel_coverage.h) handed to libFuzzer (issue 10 §6).
// In a fuzz build with CUDA and -DMAMBADIFF_KERNEL_COVERAGE=ON, the differential targets call
// publish_kernel_coverage() after each execution: the counts the kernels took since the last call
// go into an array in libFuzzer's `__libfuzzer_extra_counters` section (one byte per branch,
// saturating at 255; libFuzzer buckets the counts 1, 2, 3, 4-7, ... into features), so an input
// that makes a kernel take a new branch, or a branch a new number of times, is kept.
//
// Environment:
//   MAMBADIFF_KERNEL_COUNTERS=0   measure and log, but leave the extra counters at zero (the
//                                 "without counters" arm of scripts/gpu_fuzz_campaign.sh)
//   MAMBADIFF_KERNEL_COVERAGE_LOG=1  print a line whenever the union of kernel branches (or of
//                                 branch-count buckets) seen in this process grows:
//     mambadiff-kernel-coverage: <seconds> <executions> <branches>/<total> <features> +<new branches>
// Without the coverage build publish_kernel_coverage() does nothing.
#pragma once

namespace mambadiff::fuzz {

void publish_kernel_coverage();

// Declared first in a differential target's LLVMFuzzerTestOneInput: publishes on every return.
struct PublishKernelCoverageOnReturn {
  PublishKernelCoverageOnReturn() = default;
  PublishKernelCoverageOnReturn(const PublishKernelCoverageOnReturn&) = delete;
  PublishKernelCoverageOnReturn& operator=(const PublishKernelCoverageOnReturn&) = delete;
  ~PublishKernelCoverageOnReturn() { publish_kernel_coverage(); }
};

}  // namespace mambadiff::fuzz
