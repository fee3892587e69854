#include "bench/timing.h"

#include <fmt/format.h>
#include <torch/cuda.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <stdexcept>

#if MAMBADIFF_TORCH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#endif

namespace mambadiff::bench {

double percentile(std::vector<double> samples, double q) {
  if (samples.empty()) throw std::logic_error("percentile of no samples");
  std::sort(samples.begin(), samples.end());
  const double rank = q * static_cast<double>(samples.size() - 1);
  const auto lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, samples.size() - 1);
  return samples[lo] + (rank - static_cast<double>(lo)) * (samples[hi] - samples[lo]);
}

Timing summarize(std::vector<double> ms) {
  Timing t;
  t.median = percentile(ms, 0.5);
  t.p10 = percentile(ms, 0.1);
  t.p90 = percentile(ms, 0.9);
  t.min = *std::min_element(ms.begin(), ms.end());
  t.max = *std::max_element(ms.begin(), ms.end());
  t.ms = std::move(ms);
  return t;
}

bool cuda_timing_available() {
#if MAMBADIFF_TORCH_CUDA
  return torch::cuda::is_available();
#else
  return false;
#endif
}

void synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index() < 0 ? -1 : device.index());
}

namespace {

std::vector<double> time_on_cpu(const std::function<void()>& fn, const TimerOptions& o) {
  std::vector<double> ms;
  for (int64_t i = 0; i < o.warmup; ++i) fn();
  for (int64_t i = 0; i < o.reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return ms;
}

#if MAMBADIFF_TORCH_CUDA
std::vector<double> time_on_cuda(const std::function<void()>& fn, const torch::Device& device, const TimerOptions& o) {
  // 256 MiB, as triton.testing.do_bench clears the cache: H100's L2 is 50 MB, H200's 60 MB.
  constexpr int64_t kFlushBytes = int64_t{256} << 20;
  torch::Tensor flush;
  if (o.flush_l2) flush = torch::empty({kFlushBytes}, torch::TensorOptions().dtype(torch::kUInt8).device(device));
  for (int64_t i = 0; i < o.warmup; ++i) fn();
  synchronize(device);
  // Timing events (cudaEventDefault): the default CUDAEvent disables timing.
  std::vector<at::cuda::CUDAEvent> start, end;
  for (int64_t i = 0; i < o.reps; ++i) {
    start.emplace_back(cudaEventDefault);
    end.emplace_back(cudaEventDefault);
  }
  for (int64_t i = 0; i < o.reps; ++i) {
    if (flush.defined()) flush.zero_();
    start[static_cast<size_t>(i)].record();
    fn();
    end[static_cast<size_t>(i)].record();
  }
  synchronize(device);
  std::vector<double> ms;
  for (int64_t i = 0; i < o.reps; ++i) ms.push_back(start[static_cast<size_t>(i)].elapsed_time(end[static_cast<size_t>(i)]));
  return ms;
}
#endif

}  // namespace

Timing time_calls(const std::function<void()>& fn, const torch::Device& device, const TimerOptions& o) {
  if (o.reps < 1 || o.warmup < 0) throw std::logic_error("time_calls: reps must be >= 1 and warmup >= 0");
  if (!device.is_cuda()) return summarize(time_on_cpu(fn, o));
#if MAMBADIFF_TORCH_CUDA
  return summarize(time_on_cuda(fn, device, o));
#else
  throw std::logic_error("time_calls: this build's LibTorch has no CUDA");
#endif
}

std::string device_description(const torch::Device& device) {
  if (device.is_cuda()) {
#if MAMBADIFF_TORCH_CUDA
    const cudaDeviceProp* p = at::cuda::getDeviceProperties(device.index() < 0 ? 0 : device.index());
    return fmt::format("{} ({:.0f} GiB)", p->name, static_cast<double>(p->totalGlobalMem) / (1 << 30));
#else
    return "CUDA device";
#endif
  }
  std::string model = "unknown model";
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) == 0 && line.find(':') != std::string::npos) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  }
  return fmt::format("CPU: {} ({} threads)", model, torch::get_num_threads());
}

}  // namespace mambadiff::bench
