// The memory a run needs, estimated from the config and the run's shape BEFORE anything is
// allocated, and checked against a limit, so that a huge token list or chunk_size ends as a clean
// InputError instead of an allocation failure or the kernel's OOM killer.
//
// The limit is MAMBADIFF_MEMORY_LIMIT_BYTES when set (a positive integer), else half the
// machine's physical memory (sysconf): check and diff hold a path's results beside the
// reference's, and the estimate leaves out the allocator's overhead and small temporaries, so
// half leaves room for both and for the rest of the machine.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "engine/config.h"

namespace mambadiff {

struct MemoryEstimate {
  uint64_t bytes = 0;           // saturates at UINT64_MAX
  std::string largest;          // what the largest term is, with the sizes behind it
  uint64_t largest_bytes = 0;
  // Adds a term of prod(dims) * itemsize bytes (saturating).
  void add(const std::string& what, const std::vector<int64_t>& dims, uint64_t itemsize);
  // Adds a term of `term` bytes (saturating).
  void add_bytes(const std::string& what, uint64_t term);
};

// A run of forwards of `forward_tokens[i]` tokens each at batch `batch` on a model of `config`,
// computing in `dtype`:
//  * weights: the stored copy, the path's copy in `dtype`, and the reference's float64 copy;
//  * the largest forward's working set: in_proj/conv/scan activations of one layer over the
//    tokens padded to whole chunks, the scan's [B, H, chunks, chunk_size, chunk_size] segment
//    matrices, and the logits;
//  * when `keep_outputs` (a scenario run keeps every op's results): each forward's logits and
//    per-layer outputs and the cache after it, in the path's dtype and in the reference's float64.
MemoryEstimate estimate_run_memory(const Mamba2Config& config, torch::ScalarType dtype, int64_t batch,
                                   const std::vector<int64_t>& forward_tokens, bool keep_outputs);

// The limit described above. InputError when MAMBADIFF_MEMORY_LIMIT_BYTES is not a positive integer.
uint64_t memory_limit_bytes();

// InputError naming `context` (e.g. "scenario.json" or "generate"), the estimate, its largest
// term and the limit, when the estimate exceeds the limit.
void require_memory(const MemoryEstimate& estimate, const std::string& context);

}  // namespace mambadiff
