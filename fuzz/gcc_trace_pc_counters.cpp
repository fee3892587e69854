// Host coverage for libFuzzer in a g++ build (the GPU machine has no clang): g++ instruments with
// -fsanitize-coverage=trace-pc, a call of __sanitizer_cov_trace_pc() in every basic block, which
// libFuzzer 14 no longer counts (its own definition aborts). This one hashes the caller's address
// into libFuzzer's extra counters; scripts/gpu_fuzz_campaign.sh links it before a copy of
// libclang_rt.fuzzer in which libFuzzer's definition is made weak (objcopy --weaken-symbol).
// Compiled WITHOUT -fsanitize-coverage (it would call itself).
#include <cstdint>

namespace {
constexpr uintptr_t kHostCounters = 1 << 16;  // 64 Ki counters: few collisions for ~30k basic blocks
__attribute__((section("__libfuzzer_extra_counters"))) uint8_t g_host_pc_counters[kHostCounters];
}  // namespace

extern "C" void __sanitizer_cov_trace_pc() {
  const auto pc = reinterpret_cast<uintptr_t>(__builtin_return_address(0));
  uint8_t& counter = g_host_pc_counters[(pc ^ (pc >> 16)) & (kHostCounters - 1)];
  if (counter != 255) ++counter;
}
