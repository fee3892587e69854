// ExecutionPath: one implementation of the Mamba2 model behind one interface (SPEC §4). The
// harness discovers paths through its registry (harness/path_registry.h); adding a path is adding
// one subclass and one registry line.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "engine/checkpoint.h"
#include "engine/mamba2_cache.h"

namespace mambadiff {

struct ForwardOutput {
  torch::Tensor logits;                      // [B, T, V] (fp32, or fp64 from the reference)
  std::vector<torch::Tensor> layer_outputs;  // per layer l: the residual stream after l, [B, T, D]
  std::vector<DispatchRecord> trace;         // one record per layer
};

class ExecutionPath {
 public:
  virtual ~ExecutionPath() = default;

  virtual std::string name() const = 0;
  const Mamba2Config& config() const { return config_; }
  torch::ScalarType dtype() const { return dtype_; }
  torch::Device device() const { return device_; }

  // A cache in the dtypes and on the device this path computes in.
  virtual Mamba2Cache new_cache(int64_t batch_size) const = 0;

  // tokens: [B, T] integer ids < vocab_size (InputError otherwise). Dispatches on the cache
  // (SPEC §3), runs the model, and advances cache.seqlen_offset by T.
  ForwardOutput forward(const torch::Tensor& tokens, Mamba2Cache& cache);

  // The same forward for tokens the caller already validated (ids in range) and placed on this
  // path's device: it reads no tensor data on the host, so it may run inside a CUDA-graph capture
  // (the real-cache optimizer's replayed step). Shapes are still checked.
  ForwardOutput forward_validated(const torch::Tensor& tokens, Mamba2Cache& cache);

 protected:
  ExecutionPath(const Mamba2Config& config, torch::ScalarType dtype, torch::Device device)
      : config_(config), dtype_(dtype), device_(device) {}
  // tokens: [B, T] int64, validated; on the CPU or on this path's device.
  virtual ForwardOutput run(const torch::Tensor& tokens, Mamba2Cache& cache, Branch branch) = 0;

  Mamba2Config config_;
  torch::ScalarType dtype_;
  torch::Device device_;
};

}  // namespace mambadiff
