// `mambadiff bench` (issue 11 item 3; docs/bench.md): our kernels and whole-model figures with
// warm-up, median and spread, the bytes and FLOPs each moved, and the fraction of the machine's
// MEASURED peaks (a device-to-device copy, a large matmul) that represents. Items:
//   scan          the prefill/continue scan with initial and final states, bf16 x/B/C, fp32 dt
//   state-update  the one-token step, fp32 state, updated in place as the decode does
//   decode        whole-model per-token decode, fp32, batch 1 (eager; on a GPU also a CUDA graph)
//   optimize      one real-cache optimizer step (README's measurement: Δ at layer 16 of 24)
// On a CUDA device the shapes are issue 11's; on the CPU they are scaled down so that every item
// finishes in seconds, and the report says so.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "bench/op_costs.h"
#include "bench/timing.h"

namespace mambadiff::bench {

// The items, in the order `all` runs them.
const std::vector<std::string>& item_names();

struct BenchOptions {
  std::vector<std::string> items;  // a subset of item_names()
  std::string path = "chunked";    // a differentiable path: chunked, chunked-gpu, cuda
  std::filesystem::path model;     // for decode and optimize; empty = a random model built in memory
  int64_t reps = 30;               // timed calls (optimizer steps) per row
  int64_t warmup = 5;              // untimed calls first
  std::string command;             // the command line that reproduces the run, for the report
};

// The machine's measured ceilings, the denominators of every fraction.
struct Peaks {
  double copy_gbs = 0;       // device-to-device (CPU: memory-to-memory) copy, bytes read + written / s
  double matmul_tflops = 0;  // bf16 matmul on a GPU (tensor cores), fp32 on the CPU
  std::string copy_what, matmul_what;  // what was measured
};

struct BenchResult {
  std::string what;     // an item name
  std::string shape;    // e.g. "b8 L8192 h80 p64 g1 n128"
  std::string dtype;    // e.g. "bf16 x/B/C, fp32 dt and state"
  std::string path;     // the execution path
  std::string variant;  // "eager", "cuda-graph", "" (kernels)
  std::string op;       // the function timed
  int64_t chunk = 0;    // scan only
  Timing timing;
  OpCost cost;
  // From timing, cost and the peaks (fill_rates): the achieved rates and the roofline floor
  // max(bytes / copy bandwidth, flops / matmul rate) as a fraction of the median time.
  double gbs = 0, tflops = 0, fraction_of_peak = 0;
  std::string bound;  // "memory" or "compute": the larger of the two floors
};

// Fills gbs, tflops, fraction_of_peak and bound of `r` from its timing and cost.
void fill_rates(BenchResult& r, const Peaks& peaks);

struct BenchReport {
  std::string device, date, command, commit, path, model;
  int64_t reps = 0, warmup = 0;
  Peaks peaks;
  std::vector<BenchResult> results;
  std::vector<std::string> notes;  // what the reader must know (scaled-down shapes, a capture that failed)
};

// InputError naming the option for bad options (an unknown item, a path that is not differentiable,
// reps < 1, warmup < 0); PathUnavailable when the path cannot run here.
void check_options(const BenchOptions& options);

// Runs the items; `on_result` (may be empty) sees each row as it is measured.
BenchReport run_benchmark(const BenchOptions& options, const std::function<void(const BenchResult&)>& on_result = {});

nlohmann::json to_json(const BenchReport& report);
// The human table, printed as it grows: the header once, then one line per row.
std::string table_header();
std::string table_row(const BenchResult& r);

}  // namespace mambadiff::bench
