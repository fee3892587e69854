// Guard regions around kernel outputs (SPEC §7, ggml test-backend-ops habit): fill the bytes
// before and after an output with a known pattern, run the kernel, count the words that changed.
// Device code here knows nothing of torch; pointers are raw device pointers, sizes in 32-bit words.
#pragma once

#include <cstddef>
#include <cstdint>

namespace mambadiff::kernels {

// Writes `pattern` into words [0, n) of `guard` (device memory). Returns a cudaError_t as int.
int fill_guard(uint32_t* guard, size_t n, uint32_t pattern);

// Counts the words of `guard` (device memory, n words) that differ from `pattern`; the count
// goes to *mismatches (host). Returns a cudaError_t as int.
int count_guard_mismatches(const uint32_t* guard, size_t n, uint32_t pattern, unsigned long long* mismatches);

}  // namespace mambadiff::kernels
