#include "optimizer/cuda_graph.h"

#include <torch/cuda.h>

#include <stdexcept>
#include <vector>

#if MAMBADIFF_TORCH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace mambadiff {

#if MAMBADIFF_TORCH_CUDA

struct CapturedProgram::Impl {
  explicit Impl(const torch::Device& device) : stream(c10::cuda::getStreamFromPool(false, device.index())) {}
  c10::cuda::CUDAStream stream;
  at::cuda::CUDAGraph graph{/*keep_graph=*/true};  // kept (not only its executable) to count its kernels
};

bool CapturedProgram::supported(const torch::Device& device) {
  return device.is_cuda() && torch::cuda::is_available();
}

CapturedProgram::CapturedProgram(const torch::Device& device, const std::function<void()>& program, int warmup)
    : impl_(std::make_unique<Impl>(device)) {
  // The side stream starts after everything queued so far on the current stream (the prefill).
  c10::cuda::getCurrentCUDAStream(device.index()).synchronize();
  {
    c10::cuda::CUDAStreamGuard on_side(impl_->stream);
    for (int i = 0; i < warmup; ++i) program();
    impl_->stream.synchronize();
    impl_->graph.capture_begin();
    program();
    impl_->graph.capture_end();
  }
  cudaGraph_t graph = impl_->graph.raw_cuda_graph();
  size_t nodes = 0;
  C10_CUDA_CHECK(cudaGraphGetNodes(graph, nullptr, &nodes));
  std::vector<cudaGraphNode_t> all(nodes);
  C10_CUDA_CHECK(cudaGraphGetNodes(graph, all.data(), &nodes));
  for (cudaGraphNode_t node : all) {
    cudaGraphNodeType type{};
    C10_CUDA_CHECK(cudaGraphNodeGetType(node, &type));
    kernel_count_ += type == cudaGraphNodeTypeKernel ? 1 : 0;
  }
}

void CapturedProgram::replay() {
  c10::cuda::CUDAStreamGuard on_side(impl_->stream);
  impl_->graph.replay();
  impl_->stream.synchronize();
}

#else  // LibTorch without CUDA: graphs are never supported, and the constructor is not reached.

struct CapturedProgram::Impl {};

bool CapturedProgram::supported(const torch::Device&) { return false; }

CapturedProgram::CapturedProgram(const torch::Device&, const std::function<void()>&, int) {
  throw std::logic_error("CapturedProgram: this build's LibTorch has no CUDA");
}

void CapturedProgram::replay() {}

#endif

CapturedProgram::~CapturedProgram() = default;

}  // namespace mambadiff
