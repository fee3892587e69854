#include "kernels/guard_region.h"

#include <cuda_runtime.h>

namespace mambadiff::kernels {

namespace {

__global__ void fill_kernel(uint32_t* guard, size_t n, uint32_t pattern) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    guard[i] = pattern;
  }
}

__global__ void count_kernel(const uint32_t* guard, size_t n, uint32_t pattern, unsigned long long* count) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    if (guard[i] != pattern) atomicAdd(count, 1ULL);
  }
}

constexpr int kThreads = 256;  // guard regions are small (a few KB): one wave of blocks is plenty
constexpr int kMaxBlocks = 64;

int blocks_for(size_t n) { return static_cast<int>(n / kThreads + 1 < kMaxBlocks ? n / kThreads + 1 : kMaxBlocks); }

}  // namespace

int fill_guard(uint32_t* guard, size_t n, uint32_t pattern) {
  if (n == 0) return cudaSuccess;
  fill_kernel<<<blocks_for(n), kThreads>>>(guard, n, pattern);
  return cudaGetLastError();
}

int count_guard_mismatches(const uint32_t* guard, size_t n, uint32_t pattern, unsigned long long* mismatches) {
  *mismatches = 0;
  if (n == 0) return cudaSuccess;
  unsigned long long* d_count = nullptr;
  cudaError_t err = cudaMalloc(&d_count, sizeof(unsigned long long));
  if (err != cudaSuccess) return err;
  cudaMemset(d_count, 0, sizeof(unsigned long long));
  count_kernel<<<blocks_for(n), kThreads>>>(guard, n, pattern, d_count);
  err = cudaGetLastError();
  if (err == cudaSuccess) err = cudaMemcpy(mismatches, d_count, sizeof(unsigned long long), cudaMemcpyDeviceToHost);
  cudaFree(d_count);
  return err;
}

}  // namespace mambadiff::kernels
