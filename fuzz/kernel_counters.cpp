#include "fuzz/kernel_counters.h"

#if MAMBADIFF_KERNEL_COVERAGE
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "kernels/kernel_coverage.h"

namespace {
// Read by libFuzzer after each execution (every byte of the section is a counter).
__attribute__((section("__libfuzzer_extra_counters"))) uint8_t g_kernel_extra_counters[mambadiff::kernels::kKernelBranchCount];
}  // namespace
#endif

namespace mambadiff::fuzz {

#if MAMBADIFF_KERNEL_COVERAGE
namespace {

// libFuzzer's bucket of a hit count (FuzzerTracePC.h CounterToFeature): the coverage log counts
// what libFuzzer would count as features.
int bucket(uint32_t n) {
  if (n == 0) return -1;
  if (n <= 3) return static_cast<int>(n) - 1;
  if (n <= 7) return 3;
  if (n <= 15) return 4;
  if (n <= 31) return 5;
  if (n <= 127) return 6;
  return 7;
}

}  // namespace

void publish_kernel_coverage() {
  using namespace mambadiff::kernels;
  static const bool feed = [] {
    const char* v = std::getenv("MAMBADIFF_KERNEL_COUNTERS");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  static const bool log = std::getenv("MAMBADIFF_KERNEL_COVERAGE_LOG") != nullptr;
  static const auto start = std::chrono::steady_clock::now();
  static uint64_t executions = 0;
  static bool seen_branch[kKernelBranchCount] = {};
  static bool seen_feature[kKernelBranchCount][8] = {};
  static int branches = 0, features = 0;
  ++executions;
  uint32_t counts[kKernelBranchCount] = {};
  if (kernel_coverage_take(counts) != 0) return;  // no device: nothing ran on it
  std::string fresh;
  bool grew = false;
  for (int i = 0; i < kKernelBranchCount; ++i) {
    g_kernel_extra_counters[i] = feed ? static_cast<uint8_t>(counts[i] > 255 ? 255 : counts[i]) : 0;
    const int b = bucket(counts[i]);
    if (b < 0) continue;
    if (!seen_branch[i]) {
      seen_branch[i] = true;
      ++branches;
      fresh += std::string(" +") + kernel_branch_name(i);
      grew = true;
    }
    if (!seen_feature[i][b]) {
      seen_feature[i][b] = true;
      ++features;
      grew = true;
    }
  }
  if (log && grew) {
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "mambadiff-kernel-coverage: %.1f %llu %d/%d %d%s\n", t,
                 static_cast<unsigned long long>(executions), branches, kKernelBranchCount, features, fresh.c_str());
  }
}
#else
void publish_kernel_coverage() {}
#endif

}  // namespace mambadiff::fuzz
