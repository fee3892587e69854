#include "optimizer/decode_graph.h"

#include <stdexcept>

namespace mambadiff {

bool DecodeGraph::supported(const ExecutionPath& path) { return CapturedProgram::supported(path.device()); }

DecodeGraph::DecodeGraph(ExecutionPath& path, Mamba2Cache& cache) : path_(path), cache_(cache) {
  if (!supported(path)) throw std::logic_error("DecodeGraph: path '" + path.name() + "' is not on a CUDA device");
  if (cache.seqlen_offset <= 0) throw std::logic_error("DecodeGraph: the cache has no prefill (seqlen_offset 0)");
  torch::NoGradGuard no_grad;
  const Mamba2Cache::Snapshot before = cache.snapshot();
  tokens_ = torch::zeros({cache.batch_size(), 1}, torch::TensorOptions().dtype(torch::kInt64).device(path.device()));
  // Two eager warm-up steps (cuBLAS workspaces, lazy allocations) and the capture, all real steps on
  // the cache's storage; then the cache is put back as it was.
  program_ = std::make_unique<CapturedProgram>(
      path.device(), [this] { logits_ = path_.forward_validated(tokens_, cache_).logits; }, /*warmup=*/2);
  cache.restore(before);
}

DecodeGraph::~DecodeGraph() = default;

torch::Tensor DecodeGraph::step(const torch::Tensor& tokens) {
  tokens_.copy_(tokens.reshape({cache_.batch_size(), 1}));
  program_->replay();  // waits for the step
  cache_.seqlen_offset += 1;
  return logits_.select(1, 0);
}

}  // namespace mambadiff
