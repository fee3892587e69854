#include "engine/execution_path.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "engine/errors.h"

namespace mambadiff {

namespace {

void check_token_shape(const torch::Tensor& tokens_in, const Mamba2Cache& cache) {
  if (tokens_in.dim() != 2 || tokens_in.size(1) == 0) {
    throw InputError(fmt::format("forward: tokens must be [B, T] with T >= 1, got [{}]",
                                 fmt::join(tokens_in.sizes().vec(), ", ")));
  }
  if (tokens_in.size(0) != cache.batch_size()) {
    throw InputError(fmt::format("forward: batch size {} does not match the cache's {}", tokens_in.size(0),
                                 cache.batch_size()));
  }
}

}  // namespace

ForwardOutput ExecutionPath::forward(const torch::Tensor& tokens_in, Mamba2Cache& cache) {
  check_token_shape(tokens_in, cache);
  const torch::Tensor tokens = tokens_in.to(torch::kCPU, torch::kInt64).contiguous();
  const auto lo = tokens.min().item<int64_t>(), hi = tokens.max().item<int64_t>();
  if (lo < 0 || hi >= config_.vocab_size) {
    throw InputError(fmt::format("forward: token id {} outside [0, vocab_size={})", lo < 0 ? lo : hi,
                                 config_.vocab_size));
  }
  return forward_validated(tokens, cache);
}

ForwardOutput ExecutionPath::forward_validated(const torch::Tensor& tokens, Mamba2Cache& cache) {
  check_token_shape(tokens, cache);
  if (tokens.scalar_type() != torch::kInt64 || !tokens.is_contiguous() ||
      (!tokens.is_cpu() && tokens.device() != device_)) {
    throw InputError(fmt::format("forward: validated tokens must be contiguous int64 on the CPU or {}", device_.str()));
  }
  const Branch branch = cache.dispatch(tokens.size(1));
  ForwardOutput out = run(tokens, cache, branch);
  cache.seqlen_offset += tokens.size(1);
  return out;
}

}  // namespace mambadiff
