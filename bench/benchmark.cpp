#include "bench/benchmark.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>

#include "bench/scan_ops.h"
#include "engine/chunked_path.h"
#include "engine/errors.h"
#include "harness/history.h"
#include "harness/scoped_env.h"
#include "harness/path_registry.h"
#include "optimizer/decode_graph.h"
#include "optimizer/real_cache_optimizer.h"
#if MAMBADIFF_CUDA_PATH
#include "cuda_path/fused_ops.h"
#endif
// The random in-memory model of the property tests and fuzz targets (needs only LibTorch): the
// default model of decode and optimize, so that `bench` runs without any file.
#include "tests/random_model.h"

namespace mambadiff::bench {

const std::vector<std::string>& item_names() {
  static const std::vector<std::string> kItems = {"scan", "state-update", "decode", "optimize"};
  return kItems;
}

namespace {

// ---- the shapes -------------------------------------------------------------------------------

// Issue 11's chunk-scan shapes (REFERENCE.md "Performance anchors": the 2.7b layer shape, a
// Codestral-like 8-group shape, a 24-head shape that is launch-bound), chunk 256.
std::vector<ScanShape> gpu_scan_shapes() {
  return {{8, 8192, 80, 64, 1, 128, 256}, {4, 4096, 64, 64, 8, 128, 256}, {1, 2048, 24, 64, 1, 128, 256}};
}

// The same three on the CPU, scaled down (tokens / 8 or 4, heads / 8-10, batch 1) so that the
// ATen chunked scan takes tens of milliseconds a call on a 2-core machine, not seconds.
std::vector<ScanShape> cpu_scan_shapes() {
  return {{1, 1024, 8, 64, 1, 128, 256}, {1, 1024, 8, 64, 8, 128, 256}, {1, 512, 3, 64, 1, 128, 256}};
}

// The decode state update of issue 11: h80 p64 n128 (the 2.7b layer), batch 1 and 64; on the CPU
// batch 1 and 8 (batch 64's 335 MB of state would take ~0.1 s a step there).
std::vector<ScanShape> state_update_shapes(bool gpu) {
  const int64_t big = gpu ? 64 : 8;
  return {{1, 1, 80, 64, 1, 128, 1}, {big, 1, 80, 64, 1, 128, 1}};
}

// The mamba2-130m shape of REFERENCE.md and tools/make_bench_model.py (HF's default: untied lm_head).
props::ModelSpec spec_130m() {
  props::ModelSpec s;
  s.family = "bench-130m";
  s.vocab_size = 50288;
  s.hidden_size = 768;
  s.num_layers = 24;
  s.num_heads = 24;
  s.head_dim = 64;
  s.n_groups = 1;
  s.state_size = 128;
  s.expand = 2;
  s.conv_kernel = 4;
  s.chunk_size = 256;
  s.seed = 20261202;
  return s;
}

// A small model of the same structure for the CPU: 6 layers so that "Δ at two thirds of the depth"
// (layer 4) leaves layers behind it, as layer 16 of 24 does.
props::ModelSpec spec_cpu_small() {
  props::ModelSpec s = spec_130m();
  s.family = "bench-small";
  s.vocab_size = 4096;
  s.hidden_size = 256;
  s.num_layers = 6;
  s.num_heads = 8;
  s.state_size = 64;
  s.chunk_size = 64;
  return s;
}

std::string model_label(const Mamba2Config& c) {
  return fmt::format("d{} x{} h{} p{} g{} n{} V{}", c.hidden_size, c.num_hidden_layers, c.num_heads, c.head_dim,
                     c.n_groups, c.state_size, c.vocab_size);
}

// The README's optimizer measurement (scripts/gpu_session.sh): Δ at layer 16 of 24, i.e. two
// thirds of the depth, on a 32-token prompt; the target is token 1234 (of the vocabulary).
int64_t delta_layer(const Mamba2Config& c) { return c.num_hidden_layers * 2 / 3; }
constexpr int64_t kPromptTokens = 32;
constexpr int64_t kTargetToken = 1234;

std::vector<int64_t> random_prompt(const Mamba2Config& c) {
  std::mt19937_64 rng(0);
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < kPromptTokens; ++i) ids.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(c.vocab_size)));
  return ids;
}

torch::Tensor token_row(const std::vector<int64_t>& ids) {
  return torch::tensor(ids, torch::kLong).view({1, -1});  // [1, T]
}

// ---- the peaks ----------------------------------------------------------------------------------

Peaks measure_peaks(const torch::Device& device) {
  Peaks p;
  const TimerOptions timer{/*warmup=*/2, /*reps=*/10, /*flush_l2=*/false};
  const bool gpu = device.is_cuda();
  // Copy: 1 GiB on a GPU (20x its L2, so HBM is read and written), 256 MiB on the CPU (far above
  // any last-level cache).
  const int64_t copy_elems = gpu ? (int64_t{1} << 28) : (int64_t{1} << 26);  // fp32
  {
    const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(device);
    const torch::Tensor src = torch::ones({copy_elems}, f32), dst = torch::empty({copy_elems}, f32);
    const Timing t = time_calls([&] { dst.copy_(src); }, device, timer);
    const double bytes = 2.0 * static_cast<double>(copy_elems) * 4;  // read + written
    p.copy_gbs = bytes / (t.median * 1e-3) / 1e9;
    p.copy_what = fmt::format("{} copy of {} MiB (read + written)", gpu ? "device-to-device" : "memory-to-memory",
                              copy_elems * 4 >> 20);
  }
  // Matmul: bf16 8192^3 on a GPU (1.1 TFLOP a call: the tensor cores at their rate), fp32 1024^3 on
  // the CPU (2.1 GFLOP).
  {
    const int64_t n = gpu ? 8192 : 1024;
    const auto dtype = gpu ? torch::kBFloat16 : torch::kFloat32;
    const auto opts = torch::TensorOptions().dtype(dtype).device(device);
    const torch::Tensor a = torch::randn({n, n}, opts), b = torch::randn({n, n}, opts);
    torch::Tensor c = torch::empty({n, n}, opts);
    const Timing t = time_calls([&] { torch::mm_out(c, a, b); }, device, timer);
    p.matmul_tflops = 2.0 * static_cast<double>(n) * n * n / (t.median * 1e-3) / 1e12;
    p.matmul_what = fmt::format("{} matmul {}^3", gpu ? "bf16" : "fp32", n);
  }
  return p;
}

// ---- the items ----------------------------------------------------------------------------------

struct Run {
  const BenchOptions& options;
  torch::Device device;
  BenchReport& report;
  const std::function<void(const BenchResult&)>& on_result;

  bool gpu() const { return device.is_cuda(); }
  TimerOptions timer(bool flush_l2) const { return {options.warmup, options.reps, flush_l2 && gpu()}; }

  BenchResult row(const char* what, const std::string& shape, const char* dtype, const char* variant,
                  const std::string& op) const {
    BenchResult r;
    r.what = what;
    r.shape = shape;
    r.dtype = dtype;
    r.path = options.path;
    r.variant = variant;
    r.op = op;
    return r;
  }

  void emit(BenchResult r) {
    fill_rates(r, report.peaks);
    report.results.push_back(r);
    if (on_result) on_result(report.results.back());
  }

  void scan() {
    if (!gpu()) report.notes.push_back("scan: CPU shapes are issue 11's scaled down (tokens / 8 or 4, heads / 8-10, batch 1)");
    for (const ScanShape& s : gpu() ? gpu_scan_shapes() : cpu_scan_shapes()) {
      const ScanInputs in = make_scan_inputs(s, torch::kBFloat16, device, /*seed=*/0);
      // The fused kernel's two product modes for bf16 (MAMBADIFF_SCAN_PRODUCTS): the default
      // first, then the split-TF32 one as a variant row; the ATen scan has one.
      const std::vector<std::string> modes =
          options.path == "cuda" ? std::vector<std::string>{"bf16", "split-tf32"} : std::vector<std::string>{""};
      for (const std::string& mode : modes) {
        std::optional<ScopedEnv> products;
        if (!mode.empty()) products.emplace("MAMBADIFF_SCAN_PRODUCTS", mode);
        const torch::Tensor y = run_scan(options.path, in).first;  // for y's dtype; warm-up follows
        const std::string variant = mode.empty() ? "" : mode + " products";
        BenchResult r = row("scan", s.label(), "bf16 (fp32 state)", variant.c_str(), scan_op_name(options.path));
        r.chunk = s.chunk;
        r.cost = ssd_chunk_scan_cost(s, ScanDtypes{2, 4, static_cast<int64_t>(y.element_size()), 4});
        r.timing = time_calls([&] { run_scan(options.path, in); }, device, timer(/*flush_l2=*/true));
        emit(r);
      }
    }
  }

  void state_update() {
    for (const ScanShape& s : state_update_shapes(gpu())) {
      const ScanInputs in = make_scan_inputs(s, torch::kBFloat16, device, /*seed=*/0);
      const torch::Tensor y = run_state_update(options.path, in);
      BenchResult r = row("state-update", s.step_label(), "fp32 state (bf16 x)", "", state_update_op_name(options.path));
      r.cost = state_update_cost(s, ScanDtypes{2, 4, static_cast<int64_t>(y.element_size()), 4});
      r.timing = time_calls([&] { run_state_update(options.path, in); }, device, timer(/*flush_l2=*/true));
      emit(r);
    }
  }

  void decode(const Mamba2Checkpoint& ck) {
    const auto path = make_path(options.path, ck, torch::kFloat32);
    torch::NoGradGuard no_grad;
    const std::vector<int64_t> prompt = random_prompt(ck.config);
    Mamba2Cache cache = path->new_cache(1);
    path->forward(token_row({prompt.begin(), prompt.end() - 1}), cache);
    const torch::Tensor token = token_row({prompt.back()});  // [1, 1], every step decodes the same token
    BenchResult r = row("decode", model_label(ck.config) + " b1", "fp32", "eager", "ExecutionPath::forward (T = 1)");
    r.cost = decode_step_cost(ck.config, 1, 4);
    // A step ends when its logits are ready for the host (generate's argmax reads them).
    r.timing = time_calls([&] { path->forward(token, cache); synchronize(device); }, device, timer(false));
    emit(r);

    if (!DecodeGraph::supported(*path)) return;
    // The whole-model decode replayed from one CUDA graph on the cache's storage (optimizer/
    // decode_graph.h): what generate and the optimizer's deployment check run on a GPU. On `cuda`
    // also with the decode step's ops one by one (MAMBADIFF_DECODE_FUSION=off), in the same run.
    const torch::Tensor token_ids = token.view({1}).to(device);  // on the device: the step copies it device to device
    for (const std::string& fusion : decode_fusion_modes()) {
      std::optional<ScopedEnv> mode;
      if (!fusion.empty()) mode.emplace("MAMBADIFF_DECODE_FUSION", fusion.c_str());
      std::unique_ptr<DecodeGraph> graph;
      try {
        graph = std::make_unique<DecodeGraph>(*path, cache);
      } catch (const std::exception& e) {
        report.notes.push_back(fmt::format("decode cuda-graph: capture failed: {}", first_line(e)));
        return;
      }
      r.variant = fusion == "off" ? "cuda-graph, ops one by one" : "cuda-graph";
      r.op = fmt::format("DecodeGraph::step (optimizer/decode_graph.h): the whole model's T = 1 step replayed, {} kernels",
                         graph->kernel_count());
      r.timing = time_calls([&] { graph->step(token_ids); }, device, timer(false));  // step() waits for the replay
      emit(r);
    }
#if MAMBADIFF_CUDA_PATH
    if (options.path == "cuda") decode_kernels(*path, cache);
#endif
  }

#if MAMBADIFF_CUDA_PATH
  // Where the fused decode step's time goes: each kernel of one layer's step alone (layer 0's
  // weights and cache, one token) and the lm_head product, L2 flushed before each call as the
  // whole-model step finds them (the 130m model's weights are ~10× the L2). Rows "decode-kernel".
  void decode_kernels(const ExecutionPath& path, Mamba2Cache& cache) {
    const auto* chunked = dynamic_cast<const ChunkedPath*>(&path);
    if (chunked == nullptr) return;
    const auto& c = path.config();
    const auto& w = chunked->weights().layers[0];
    const int64_t D = c.hidden_size, I = c.d_inner(), C = c.conv_dim(), H = c.num_heads;
    const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(device);
    const torch::Tensor x = torch::randn({1, 1, D}, f32), y = torch::randn({1, 1, I}, f32);
    const torch::Tensor proj = fused::norm_in_proj(x, w.norm_weight, c.layer_norm_epsilon, w.in_proj_weight, w.in_proj_bias);
    const fused::DecodeStepWeights step{w.conv1d_weight, w.conv1d_bias, w.dt_bias, -w.A_log.to(torch::kFloat32).exp(), w.D,
                                        c.time_step_min, c.time_step_max, c.n_groups};
    const torch::Tensor xBC_raw = proj.narrow(2, I, C), dt_raw = proj.narrow(2, I + C, H), gate = proj.narrow(2, 0, I);
    const auto bytes = [](const torch::Tensor& t) { return t.numel() * static_cast<int64_t>(t.element_size()); };
    const auto kernel_row = [&](const char* op, OpCost cost, const std::function<void()>& call) {
      BenchResult r = row("decode-kernel", model_label(c) + " b1", "fp32", "", op);
      r.cost = cost;
      r.timing = time_calls(call, device, timer(/*flush_l2=*/true));
      emit(r);
    };
    kernel_row("fused::norm_in_proj (rms_norm + in_proj)",
               {bytes(w.in_proj_weight) + 2 * bytes(x) + bytes(proj), 2 * w.in_proj_weight.numel()},
               [&] { fused::norm_in_proj(x, w.norm_weight, c.layer_norm_epsilon, w.in_proj_weight, w.in_proj_bias); });
    torch::Tensor& window = cache.conv_states[0];
    torch::Tensor& state = cache.ssm_states[0];
    kernel_row("fused::decode_step (conv + dt + state update, in place)",
               {2 * bytes(state) + 2 * bytes(window) + bytes(xBC_raw) + bytes(dt_raw), 5 * state.numel()},
               [&] { fused::decode_step(xBC_raw, dt_raw, window, state, step); });
    kernel_row("fused::gated_norm_out_proj (gated_rms_norm + out_proj + residual)",
               {bytes(w.out_proj_weight) + bytes(y) + bytes(gate) + 2 * bytes(x), 2 * w.out_proj_weight.numel()},
               [&] { fused::gated_norm_out_proj(y, gate, w.gated_norm_weight, c.layer_norm_epsilon, c.gated_norm_group_size(),
                                                w.out_proj_weight, x); });
    const torch::Tensor& lm_head = chunked->weights().lm_head;
    kernel_row("torch::linear (lm_head, cuBLAS)", {bytes(lm_head) + bytes(x) + 4 * lm_head.size(0), 2 * lm_head.numel()},
               [&] { torch::linear(x, lm_head); });
  }
#endif

  // On `cuda`: the decode step fused (the default) and op by op; elsewhere the path as it is.
  std::vector<std::string> decode_fusion_modes() const {
    return options.path == "cuda" ? std::vector<std::string>{"on", "off"} : std::vector<std::string>{""};
  }

  void optimize(const Mamba2Checkpoint& ck) {
    // The first step runs eagerly and the second is captured into a CUDA graph (optimizer/
    // real_cache_optimizer.cpp): at least those two are warm-up whatever --warmup says.
    const int64_t skip = std::max<int64_t>(options.warmup, 2);
    OptimizeOptions o;
    o.prompt = random_prompt(ck.config);
    o.target = {kTargetToken % ck.config.vocab_size};
    o.layers = {delta_layer(ck.config)};
    o.loss = "margin";
    o.margin = 1e9;  // never reached: every step runs (scripts/gpu_session.sh's measurement)
    o.steps = skip + options.reps;
    o.path = options.path;
    o.generate_tokens = 0;
    for (const std::string& fusion : decode_fusion_modes()) {
      std::optional<ScopedEnv> mode;
      if (!fusion.empty()) mode.emplace("MAMBADIFF_DECODE_FUSION", fusion.c_str());
      const OptimizeResult res = optimize_delta(ck, o);
      if (static_cast<int64_t>(res.step_seconds.size()) <= skip) {
        throw std::runtime_error(fmt::format("bench optimize: the optimizer stopped after {} of {} steps",
                                             res.step_seconds.size(), o.steps));
      }
      std::vector<double> ms;
      for (size_t i = static_cast<size_t>(skip); i < res.step_seconds.size(); ++i) ms.push_back(res.step_seconds[i] * 1e3);
      const std::string variant = std::string(res.cuda_graph ? "cuda-graph" : "eager") + (fusion == "off" ? ", ops one by one" : "");
      BenchResult r = row("optimize", fmt::format("{} b1 delta@{}", model_label(ck.config), o.layers[0]), "fp32",
                          variant.c_str(),
                          res.cuda_graph ? fmt::format("optimize_delta (Adam, margin loss): one iteration replayed, {} kernels",
                                                       res.graph_kernels)
                                         : std::string("optimize_delta (Adam, margin loss)"));
      r.cost = optimizer_step_cost(ck.config, o.layers[0], 4);
      r.timing = summarize(ms);
      if (!res.zero_delta_gate_passed || !res.restore_bit_identical) {
        report.notes.push_back(fmt::format("optimize: zero-delta gate passed {}, restore bit-identical {}",
                                           res.zero_delta_gate_passed, res.restore_bit_identical));
      }
      emit(r);
    }
  }
};

// The device a path computes on, asked of the path itself (the registry knows it, names do not):
// built on a one-layer model of a few hundred weights.
torch::Device device_of(const std::string& path) {
  props::ModelSpec tiny;
  tiny.family = "device-probe";
  return make_path(path, props::make_checkpoint(tiny), torch::kFloat32)->device();
}

}  // namespace

void fill_rates(BenchResult& r, const Peaks& peaks) {
  const double s = r.timing.median * 1e-3;
  r.gbs = s > 0 ? static_cast<double>(r.cost.bytes) / s / 1e9 : 0;
  r.tflops = s > 0 ? static_cast<double>(r.cost.flops) / s / 1e12 : 0;
  const double memory_s = peaks.copy_gbs > 0 ? static_cast<double>(r.cost.bytes) / (peaks.copy_gbs * 1e9) : 0;
  const double compute_s = peaks.matmul_tflops > 0 ? static_cast<double>(r.cost.flops) / (peaks.matmul_tflops * 1e12) : 0;
  r.bound = memory_s >= compute_s ? "memory" : "compute";
  r.fraction_of_peak = s > 0 ? std::max(memory_s, compute_s) / s : 0;
}

void check_options(const BenchOptions& o) {
  if (o.items.empty()) throw InputError("--what: nothing to measure");
  for (const auto& item : o.items) {
    if (std::find(item_names().begin(), item_names().end(), item) == item_names().end()) {
      throw InputError(fmt::format("--what: '{}' is not one of {}, all", item, fmt::join(item_names(), ", ")));
    }
  }
  PathRole role;
  try {
    role = path_role(o.path);
  } catch (const InputError& e) {
    throw InputError(fmt::format("--path: {}", e.what()));
  }
  if (role != PathRole::kDifferentiable) {
    throw InputError(fmt::format("--path: '{}' is not a path bench times ({})", o.path,
                                 fmt::join(registered_paths(PathRole::kDifferentiable), ", ")));
  }
  std::string why;
  if (!path_available(o.path, torch::kFloat32, &why)) throw PathUnavailable(fmt::format("--path {}: {}", o.path, why));
  if (o.reps < 1) throw InputError(fmt::format("--reps: {} is not >= 1", o.reps));
  if (o.warmup < 0) throw InputError(fmt::format("--warmup: {} is not >= 0", o.warmup));
}

BenchReport run_benchmark(const BenchOptions& o, const std::function<void(const BenchResult&)>& on_result) {
  check_options(o);
  const torch::Device device = device_of(o.path);
  auto wants = [&](const char* item) { return std::find(o.items.begin(), o.items.end(), item) != o.items.end(); };
  // The model first: a --model that does not load is bad input before anything is measured.
  std::unique_ptr<Mamba2Checkpoint> ck;
  std::string model = "none (scan and state-update only)";
  if (!o.model.empty()) {
    ck = std::make_unique<Mamba2Checkpoint>(Mamba2Checkpoint::load(o.model));
    model = fmt::format("{} ({})", o.model.string(), model_label(ck->config));
  } else if (wants("decode") || wants("optimize")) {
    const props::ModelSpec spec = device.is_cuda() ? spec_130m() : spec_cpu_small();
    ck = std::make_unique<Mamba2Checkpoint>(props::make_checkpoint(spec));
    model = fmt::format("random weights built in memory, {} ({})", spec.family, model_label(ck->config));
  }

  BenchReport report;
  report.device = device_description(device);
  report.date = utc_now();
  report.command = o.command;
  report.commit = current_commit();
  report.path = o.path;
  report.model = model;
  report.reps = o.reps;
  report.warmup = o.warmup;
  report.peaks = measure_peaks(device);
  Run run{o, device, report, on_result};
  for (const auto& item : item_names()) {  // in the documented order, whatever order --what gave
    if (!wants(item.c_str())) continue;
    if (item == "scan") run.scan();
    if (item == "state-update") run.state_update();
    if (item == "decode") run.decode(*ck);
    if (item == "optimize") run.optimize(*ck);
  }
  return report;
}

nlohmann::json to_json(const BenchReport& rep) {
  nlohmann::json results = nlohmann::json::array();
  for (const BenchResult& r : rep.results) {
    results.push_back({{"what", r.what}, {"shape", r.shape}, {"dtype", r.dtype}, {"path", r.path},
                       {"variant", r.variant}, {"op", r.op}, {"chunk", r.chunk},
                       {"median_ms", r.timing.median}, {"p10_ms", r.timing.p10}, {"p90_ms", r.timing.p90},
                       {"min_ms", r.timing.min}, {"max_ms", r.timing.max}, {"reps", r.timing.ms.size()},
                       {"bytes", r.cost.bytes}, {"flops", r.cost.flops}, {"gbs", r.gbs}, {"tflops", r.tflops},
                       {"fraction_of_peak", r.fraction_of_peak}, {"bound", r.bound}});
  }
  return {{"format", "mambadiff.bench.v1"},
          {"device", rep.device},
          {"date", rep.date},
          {"command", rep.command},
          {"commit", rep.commit},
          {"path", rep.path},
          {"model", rep.model},
          {"reps", rep.reps},
          {"warmup", rep.warmup},
          {"copy_bandwidth_gbs", rep.peaks.copy_gbs},
          {"matmul_tflops", rep.peaks.matmul_tflops},
          {"peaks", {{"copy", rep.peaks.copy_what}, {"matmul", rep.peaks.matmul_what}}},
          {"notes", rep.notes},
          {"results", results}};
}

namespace {

std::string duration(double ms) { return ms < 1.0 ? fmt::format("{:.1f} us", ms * 1e3) : fmt::format("{:.3f} ms", ms); }

}  // namespace

std::string table_header() {
  return fmt::format("{:<13} {:<44} {:<20} {:<11} {:>11} {:>23} {:>9} {:>9} {:>18}\n", "item", "shape", "dtype", "variant",
                     "median", "p10 - p90", "GB/s", "TFLOP/s", "% of peak (bound)");
}

std::string table_row(const BenchResult& r) {
  return fmt::format("{:<13} {:<44} {:<20} {:<11} {:>11} {:>23} {:>9.1f} {:>9.2f} {:>8.1f} {:<9}\n", r.what, r.shape,
                     r.dtype, r.variant.empty() ? "-" : r.variant, duration(r.timing.median),
                     duration(r.timing.p10) + " - " + duration(r.timing.p90), r.gbs, r.tflops,
                     100 * r.fraction_of_peak, "(" + r.bound + ")");
}

}  // namespace mambadiff::bench
