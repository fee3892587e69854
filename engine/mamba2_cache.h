// Mamba2Cache: the real inference cache (SPEC §3). Per layer a conv window and an SSM state, plus
// the count of tokens consumed. Its `seqlen_offset` decides the dispatch of every forward.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "engine/config.h"

namespace mambadiff {

// The three branches of a forward (SPEC §3).
enum class Branch {
  kPrefill,   // cache empty: scan from a zero state, conv from zero history
  kStep,      // cache non-empty, T == 1: the single-token decode kernels
  kContinue,  // cache non-empty, T > 1: chunked scan from the cached state, conv with cached window
};
const char* branch_name(Branch b);
// The logical kernels a branch runs in every layer, whatever the path: the dispatch-trace entry.
const char* logical_kernels(Branch b);

// One line of the dispatch trace: which branch and which (logical) kernels ran for one layer of
// one forward. Kernel names are the logical ops every path implements ("ssd_chunk_scan",
// "selective_state_update", ...), so two paths that dispatch alike produce equal traces.
struct DispatchRecord {
  int64_t layer = 0;
  Branch branch = Branch::kPrefill;
  std::string kernels;  // e.g. "causal_conv1d+ssd_chunk_scan+gated_rms_norm"
  bool operator==(const DispatchRecord& o) const {
    return layer == o.layer && branch == o.branch && kernels == o.kernels;
  }
};

class Mamba2Cache {
 public:
  // A saved copy of every attribute and state byte.
  struct Snapshot {
    std::vector<torch::Tensor> conv_states;
    std::vector<torch::Tensor> ssm_states;
    int64_t seqlen_offset = 0;
  };

  Mamba2Cache() = default;
  // conv_states[l]: [B, conv_dim, K] in conv_dtype; ssm_states[l]: [B, H, P, N] in state_dtype.
  Mamba2Cache(const Mamba2Config& config, int64_t batch_size, torch::ScalarType conv_dtype,
              torch::ScalarType state_dtype, torch::Device device);

  int64_t num_layers() const { return static_cast<int64_t>(ssm_states.size()); }
  int64_t batch_size() const { return batch_size_; }
  torch::ScalarType conv_dtype() const { return conv_dtype_; }
  torch::ScalarType state_dtype() const { return state_dtype_; }
  torch::Device device() const { return device_; }

  // The branch a forward of `num_tokens` tokens takes on this cache.
  Branch dispatch(int64_t num_tokens) const;

  // Adds delta ([B, H, P, N] or broadcastable [H, P, N]) to ssm_states[layer] in place.
  // InputError names the layer or the shape at fault.
  void inject(int64_t layer, const torch::Tensor& delta);

  // Deep copies; restore() writes the saved bytes back into the same storage (pointers unchanged,
  // NaN payloads preserved: the copy is done on byte views, never through float arithmetic).
  Snapshot snapshot() const;
  void restore(const Snapshot& snap);
  // Zero states, seqlen_offset 0 (storage kept).
  void reset();

  std::vector<torch::Tensor> conv_states;  // per layer [B, conv_dim, K]
  std::vector<torch::Tensor> ssm_states;   // per layer [B, H, P, N]
  int64_t seqlen_offset = 0;

 private:
  int64_t batch_size_ = 0;
  torch::ScalarType conv_dtype_ = torch::kFloat32;
  torch::ScalarType state_dtype_ = torch::kFloat32;
  torch::Device device_ = torch::kCPU;
};

// Restores `cache` to `snap` on every way out of a scope. The normal path calls restore_now(),
// which throws like Mamba2Cache::restore; the destructor (unwinding after an exception or an early
// return) restores only if restore_now() did not, and never throws: a failure there is written to
// stderr as one line and kept in failure() until the guard dies.
class ScopedCacheRestore {
 public:
  ScopedCacheRestore(Mamba2Cache& cache, const Mamba2Cache::Snapshot& snap) : cache_(cache), snap_(snap) {}
  ScopedCacheRestore(const ScopedCacheRestore&) = delete;
  ScopedCacheRestore& operator=(const ScopedCacheRestore&) = delete;
  ~ScopedCacheRestore() noexcept;
  void restore_now();
  const std::string& failure() const { return failure_; }

 private:
  Mamba2Cache& cache_;
  const Mamba2Cache::Snapshot& snap_;
  bool restored_ = false;
  std::string failure_;
};

// InputError naming `name` and both tensors' shapes, dtypes and devices unless src's bytes can be
// copied into dst (both defined and contiguous, one dtype, shape and device).
void check_bytes_copyable(const torch::Tensor& dst, const torch::Tensor& src, const std::string& name);
// Copies src's bytes into dst (same dtype, shape, device and contiguity), bit for bit. A mismatch
// is an InputError naming the tensor (`name`) and both shapes and dtypes.
void copy_bytes(torch::Tensor& dst, const torch::Tensor& src, const std::string& name = "tensor");
// The same for pairs dst[i] <- src[i] (named names[i], or "#i" when names is empty), as one
// multi-tensor copy; every pair is checked before any byte is copied.
void copy_bytes(const std::vector<torch::Tensor>& dst, const std::vector<torch::Tensor>& src,
                const std::vector<std::string>& names = {});

}  // namespace mambadiff
