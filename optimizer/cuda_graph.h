// A program captured once into a CUDA graph and replayed (the optimizer's iteration; see
// optimizer/delta_loop.h). Capture runs on a side stream, as CUDA requires (the legacy default
// stream cannot be captured); replay launches the whole recorded kernel sequence with one call,
// which removes the per-kernel host overhead that dominates a batch-1 decode step.
//
// The program must not read device data on the host, copy from pageable host memory, or
// synchronize; every tensor it touches must outlive the graph (memory it allocates during capture
// belongs to the graph's private pool and is reused by every replay).
#pragma once

#include <functional>
#include <memory>

#include <torch/torch.h>

namespace mambadiff {

class CapturedProgram {
 public:
  // Whether graphs can be captured on `device` with this build (a CUDA device and LibTorch with CUDA).
  static bool supported(const torch::Device& device);

  // Runs `program` eagerly `warmup` times on the side stream (lazy initialization of cuBLAS
  // workspaces and the autograd engine must not happen inside a capture), then captures it.
  // The warm-up runs are real runs: their effects stay.
  CapturedProgram(const torch::Device& device, const std::function<void()>& program, int warmup);
  ~CapturedProgram();
  CapturedProgram(const CapturedProgram&) = delete;
  CapturedProgram& operator=(const CapturedProgram&) = delete;

  // Launches the captured program and waits for it.
  void replay();

  // Kernel launches recorded in the graph (what one replay runs), counted at capture.
  int64_t kernel_count() const { return kernel_count_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int64_t kernel_count_ = 0;
};

}  // namespace mambadiff
