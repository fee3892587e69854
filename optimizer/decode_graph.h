// Whole-model decode as one captured program (issue 11 §2): the one-token step of every layer for
// a whole batch — norms, projections, conv update, dt, state update, gated norm, lm_head — captured
// once into a CUDA graph on the cache's own storage and replayed for every token. Replay launches
// the recorded kernels with one call: the per-kernel host overhead that dominates a batch-1 step is
// gone. Used by `generate` and the optimizer's deployment check (deploy_on), and timed by `bench`.
//
// The cache must be past its prefill (seqlen_offset > 0: the step is the decode branch, SPEC §3)
// and stay the same object with the same storage while the graph lives (its tensors are the
// graph's fixed addresses; restore() and inject() write into that storage and are fine between
// steps). The construction leaves the cache exactly as it found it: the warm-up and capture runs
// are undone by a restore.
#pragma once

#include <memory>

#include <torch/torch.h>

#include "engine/execution_path.h"
#include "optimizer/cuda_graph.h"

namespace mambadiff {

class DecodeGraph {
 public:
  // Whether `path` can be captured: it runs on a CUDA device and this LibTorch has CUDA.
  static bool supported(const ExecutionPath& path);

  // std::logic_error when unsupported or the cache is not past its prefill.
  DecodeGraph(ExecutionPath& path, Mamba2Cache& cache);
  ~DecodeGraph();
  DecodeGraph(const DecodeGraph&) = delete;
  DecodeGraph& operator=(const DecodeGraph&) = delete;

  // One decode step of the whole batch: tokens [B] int64 (already validated: ids < vocab_size; any
  // device). Advances cache.seqlen_offset by 1, as forward does. Returns the logits [B, V] in the
  // graph's output buffer: valid until the next step (clone to keep).
  torch::Tensor step(const torch::Tensor& tokens);

  // Kernels one step launches (the captured graph's kernel nodes).
  int64_t kernel_count() const { return program_->kernel_count(); }

 private:
  ExecutionPath& path_;
  Mamba2Cache& cache_;
  torch::Tensor tokens_;  // [B, 1] int64 on the device: the graph's input
  torch::Tensor logits_;  // [B, 1, V]: the graph's output
  std::unique_ptr<CapturedProgram> program_;
};

}  // namespace mambadiff
