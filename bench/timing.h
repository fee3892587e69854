// Timing a call the way triton.testing.do_bench times the ecosystem's kernels (tools/bench_peers.py),
// so that our figures and theirs come from the same method: warm-up calls, then `reps` timed
// calls, each alone between two CUDA events on the device (after a write of a buffer larger than
// L2 when `flush_l2`, so no call starts with its inputs cached by the previous one), or between two
// steady_clock reads on the CPU. The summary is the median and the spread of the samples.
//
// The only file of bench/ that talks to CUDA directly (events, device name, synchronize).
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

namespace mambadiff::bench {

// Percentiles by linear interpolation between the closest ranks (numpy's default), so that
// min <= p10 <= median <= p90 <= max for any sample set, and the median of an even count is the
// mean of the two middle samples.
struct Timing {
  std::vector<double> ms;  // every timed call, in call order
  double median = 0, p10 = 0, p90 = 0, min = 0, max = 0;
};

// The q-quantile (q in [0, 1]) of `samples` (any order, not empty).
double percentile(std::vector<double> samples, double q);

// Timing of `ms` (not empty).
Timing summarize(std::vector<double> ms);

struct TimerOptions {
  int64_t warmup = 5;     // untimed calls first (lazy initialisation, autotuning, allocator growth)
  int64_t reps = 30;      // timed calls
  bool flush_l2 = false;  // GPU only: overwrite a buffer larger than L2 before each timed call
};

// Calls `fn` warmup + reps times on `device` and times the last reps calls. On a CUDA device `fn`
// only queues work (it may also wait for it); the elapsed time between the events recorded before
// and after it on the current stream is what counts.
Timing time_calls(const std::function<void()>& fn, const torch::Device& device, const TimerOptions& options);

// Waits for everything queued on `device` (nothing on the CPU).
void synchronize(const torch::Device& device);

// "NVIDIA H200 (139 GiB)" or "CPU: <model name> (N threads)".
std::string device_description(const torch::Device& device);

// Whether this build can time on a CUDA device (a CUDA device is present and LibTorch has CUDA).
bool cuda_timing_available();

}  // namespace mambadiff::bench
