// `mambadiff bench` (bench/, docs/bench.md): the statistics bracket the median, every op's bytes and
// FLOPs equal a count made here another way (tensor by tensor, chunk by chunk, from the loaded
// model's own tensors) and REFERENCE.md's anchor figures, the fraction of peak is the roofline floor
// over the median, the JSON report has every field with sane values, each item runs alone, and bad
// usage is exit 2 naming the option. All on the CPU (the chunked path, scaled-down shapes).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>
#include <torch/cuda.h>

#include "bench/benchmark.h"
#include "bench/op_costs.h"
#include "bench/timing.h"
#include "engine/checkpoint.h"
#include "engine/mamba2_cache.h"
#include "tests/test_support.h"

namespace mambadiff::bench {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using test_support::fresh_dir;
using test_support::model_dir;
using test_support::read_text;
using test_support::run_cli;

// ---- statistics ---------------------------------------------------------------------------------

TEST(BenchStatistics, PercentilesInterpolateBetweenTheClosestRanks) {
  // numpy.percentile([5, 1, 4, 2, 3], [10, 50, 90]) = [1.4, 3, 4.6]; the median of an even count is
  // the mean of the two middle samples.
  const Timing t = summarize({5, 1, 4, 2, 3});
  EXPECT_DOUBLE_EQ(t.p10, 1.4);
  EXPECT_DOUBLE_EQ(t.median, 3);
  EXPECT_DOUBLE_EQ(t.p90, 4.6);
  EXPECT_DOUBLE_EQ(t.min, 1);
  EXPECT_DOUBLE_EQ(t.max, 5);
  EXPECT_DOUBLE_EQ(summarize({4, 1, 3, 2}).median, 2.5);
  EXPECT_DOUBLE_EQ(summarize({7}).p90, 7);
  EXPECT_EQ(t.ms, (std::vector<double>{5, 1, 4, 2, 3})) << "the samples are kept in call order";
}

TEST(BenchStatistics, TheSpreadBracketsTheMedianForAnySamples) {
  std::mt19937 rng(20261202);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<double> ms(1 + rng() % 40);
    for (double& v : ms) v = std::exponential_distribution<double>(1.0)(rng);
    const Timing t = summarize(ms);
    EXPECT_LE(t.min, t.p10);
    EXPECT_LE(t.p10, t.median);
    EXPECT_LE(t.median, t.p90);
    EXPECT_LE(t.p90, t.max);
  }
}

// ---- bytes and FLOPs, counted here another way ----------------------------------------------------

// The bytes of a list of tensors: dims and element size each.
struct Tensors {
  int64_t bytes = 0;
  Tensors& add(std::vector<int64_t> dims, int64_t element_size) {
    int64_t n = element_size;
    for (int64_t d : dims) n *= d;
    bytes += n;
    return *this;
  }
};

// Every tensor the scan reads or writes, once: x, B, C in `act` bytes, dt fp32, A and D fp32, the
// initial and the final state fp32, y in `y` bytes.
int64_t scan_bytes_by_tensor(const ScanShape& s, int64_t act, int64_t y) {
  const int64_t b = s.batch, L = s.tokens, h = s.heads, p = s.head_dim, g = s.groups, n = s.state_size;
  return Tensors{}
      .add({b, L, h, p}, act)   // x
      .add({b, L, g, n}, act)   // B
      .add({b, L, g, n}, act)   // C
      .add({b, L, h}, 4)        // dt
      .add({h}, 4)              // A
      .add({h}, 4)              // D
      .add({b, h, p, n}, 4)     // initial state
      .add({b, L, h, p}, y)     // y
      .add({b, h, p, n}, 4)     // final state
      .bytes;
}

// The chunked algorithm's multiply-adds, chunk by chunk as it runs them (the last chunk padded to Q
// in its Q x Q blocks; its per-token products over its real tokens only); 2 FLOPs each.
int64_t scan_flops_by_chunk(const ScanShape& s) {
  const int64_t h = s.heads, p = s.head_dim, g = s.groups, n = s.state_size, Q = s.chunk;
  int64_t macs = 0;
  for (int64_t start = 0; start < s.tokens; start += Q) {
    const int64_t len = std::min(Q, s.tokens - start);
    macs += g * (Q * Q * n);    // C B^T of the chunk, per group
    macs += h * (Q * Q * p);    // its Q x Q matrix times dt x, per head
    macs += h * (len * n * p);  // the chunk's state from its tokens
    macs += h * (len * n * p);  // the entering state's share of its outputs
    macs += h * (p * n);        // the state handed on to the next chunk
    macs += h * (len * p);      // D x
  }
  return 2 * s.batch * macs;
}

int64_t state_update_bytes_by_tensor(const ScanShape& s, int64_t act, int64_t y) {
  const int64_t b = s.batch, h = s.heads, p = s.head_dim, g = s.groups, n = s.state_size;
  return Tensors{}
      .add({b, h, p, n}, 4)  // state read
      .add({b, h, p, n}, 4)  // state written
      .add({b, h, p}, act)   // x
      .add({b, g, n}, act)   // B
      .add({b, g, n}, act)   // C
      .add({b, h}, 4)        // dt
      .add({h}, 4)           // A
      .add({h}, 4)           // D
      .add({b, h, p}, y)     // y
      .bytes;
}

TEST(BenchCosts, ScanBytesAreEveryTensorReadOrWrittenOnce) {
  for (const ScanShape& s : {ScanShape{1, 1, 1, 1, 1, 1, 1}, ScanShape{2, 37, 6, 8, 3, 5, 16}, ScanShape{8, 8192, 80, 64, 1, 128, 256}}) {
    SCOPED_TRACE(s.label());
    EXPECT_EQ(ssd_chunk_scan_cost(s, ScanDtypes{2, 4, 4, 4}).bytes, scan_bytes_by_tensor(s, 2, 4));
    EXPECT_EQ(ssd_chunk_scan_cost(s, ScanDtypes{2, 4, 2, 4}).bytes, scan_bytes_by_tensor(s, 2, 2));
    EXPECT_EQ(ssd_chunk_scan_cost(s, ScanDtypes{4, 4, 4, 4}).bytes, scan_bytes_by_tensor(s, 4, 4));
  }
}

TEST(BenchCosts, ScanFlopsAreTheChunkedAlgorithmsProductsChunkByChunk) {
  // Lengths a multiple of the chunk, one short of it, one past it, shorter than one chunk.
  for (const ScanShape& s : {ScanShape{2, 64, 4, 8, 2, 16, 16}, ScanShape{2, 63, 4, 8, 2, 16, 16},
                             ScanShape{1, 65, 6, 4, 3, 8, 16}, ScanShape{3, 5, 2, 4, 1, 4, 16}}) {
    SCOPED_TRACE(s.label());
    EXPECT_EQ(ssd_chunk_scan_cost(s, ScanDtypes{}).flops, scan_flops_by_chunk(s));
  }
}

TEST(BenchCosts, StateUpdateMovesTheStateTwiceAndFiveFlopsPerStateElement) {
  for (const ScanShape& s : {ScanShape{1, 1, 80, 64, 1, 128, 1}, ScanShape{3, 1, 6, 8, 2, 5, 1}}) {
    SCOPED_TRACE(s.step_label());
    const OpCost c = state_update_cost(s, ScanDtypes{2, 4, 4, 4});
    EXPECT_EQ(c.bytes, state_update_bytes_by_tensor(s, 2, 4));
    // Per state element: decay (1 multiply), + (dt x) B and + C s (a multiply-add each); D x per row.
    const int64_t elements = s.batch * s.heads * s.head_dim * s.state_size, rows = s.batch * s.heads * s.head_dim;
    EXPECT_EQ(c.flops, 5 * elements + 2 * rows);
  }
}

TEST(BenchCosts, AgreeWithTheReferenceAnchorFigures) {
  // REFERENCE.md "Performance anchors": mamba_ssm's chunk scan, b8 L8192 h80 p64 g1 n128, bf16 in
  // and out: "about 109 TFLOP/s" in 3.19 ms, and "reading inputs and writing outputs once is about
  // 1.4 GB".
  const OpCost scan = ssd_chunk_scan_cost({8, 8192, 80, 64, 1, 128, 256}, ScanDtypes{2, 4, 2, 4});
  EXPECT_NEAR(static_cast<double>(scan.flops) / 3.19e-3 / 1e12, 109, 1);
  EXPECT_NEAR(static_cast<double>(scan.bytes) / 1e9, 1.4, 0.05);
  // selective_state_update b64 h80 p64 n128: "335 MB of state read and written".
  const OpCost step = state_update_cost({64, 1, 80, 64, 1, 128, 1}, ScanDtypes{2, 4, 4, 4});
  EXPECT_NEAR(static_cast<double>(step.bytes) / 1e6, 335.5, 3);
  // The 130m shape in fp32: "reading the weights once per token is ~0.52 GB"; the states add ~38 MB.
  Mamba2Config c;  // HF's defaults beside these: expand 2, one group, conv 4 with bias, no other biases
  c.vocab_size = 50288;
  c.hidden_size = 768;
  c.num_hidden_layers = 24;
  c.state_size = 128;
  c.head_dim = 64;
  c.num_heads = 24;
  const double decode_gb = static_cast<double>(decode_step_cost(c, 1, 4).bytes) / 1e9;
  EXPECT_GT(decode_gb, 0.52);
  EXPECT_LT(decode_gb, 0.58);
}

// The bytes a decode step of `ck` reads and writes at batch 1 in fp32, from the model's own tensors
// and a real cache: every layer weight, norm_f and lm_head once (a tied lm_head is the embedding
// matrix: once), one embedding row, every state and conv window read and written, the logits.
int64_t decode_bytes_from_the_model(const Mamba2Checkpoint& ck) {
  int64_t elements = 0;
  auto add = [&](const torch::Tensor& t) { elements += t.defined() ? t.numel() : 0; };
  for (const LayerWeights& l : ck.weights.layers) {
    for (const torch::Tensor* t : {&l.norm_weight, &l.in_proj_weight, &l.in_proj_bias, &l.conv1d_weight, &l.conv1d_bias,
                                   &l.dt_bias, &l.A_log, &l.D, &l.gated_norm_weight, &l.out_proj_weight, &l.out_proj_bias}) {
      add(*t);
    }
  }
  add(ck.weights.norm_f_weight);
  add(ck.weights.lm_head);
  elements += ck.weights.embeddings.size(1);  // the one row looked up
  const Mamba2Cache cache(ck.config, 1, torch::kFloat32, torch::kFloat32, torch::kCPU);
  int64_t cache_bytes = 0;
  for (const auto& t : cache.ssm_states) cache_bytes += 2 * t.nbytes();
  for (const auto& t : cache.conv_states) cache_bytes += 2 * t.nbytes();
  return 4 * elements + cache_bytes + 4 * ck.config.vocab_size;
}

TEST(BenchCosts, DecodeBytesAreTheModelsTensorsOnceAndItsCacheReadAndWritten) {
  for (const char* name : {"tiny", "grouped", "limited"}) {  // tied; untied with biases; no conv bias
    SCOPED_TRACE(name);
    const Mamba2Checkpoint ck = Mamba2Checkpoint::load(model_dir(name));
    EXPECT_EQ(decode_step_cost(ck.config, 1, 4).bytes, decode_bytes_from_the_model(ck));
  }
}

TEST(BenchCosts, AnOptimizerStepCostsMoreThanADecodeStepButLessThanThree) {
  // Forward + backward from the logits to the Δ layer + restore: between one and three decode steps
  // (a backward through every layer costs about one more forward).
  const Mamba2Checkpoint ck = Mamba2Checkpoint::load(model_dir("bytes"));
  const OpCost decode = decode_step_cost(ck.config, 1, 4);
  for (int64_t layer = 0; layer < ck.config.num_hidden_layers; ++layer) {
    const OpCost step = optimizer_step_cost(ck.config, layer, 4);
    EXPECT_GT(step.bytes, decode.bytes);
    EXPECT_LT(step.bytes, 3 * decode.bytes);
    EXPECT_GT(step.flops, decode.flops);
    EXPECT_LT(step.flops, 3 * decode.flops);
    if (layer > 0) {
      EXPECT_LT(step.flops, optimizer_step_cost(ck.config, layer - 1, 4).flops) << "a deeper Δ is cheaper";
    }
  }
}

TEST(BenchRates, TheFractionOfPeakIsTheRooflineFloorOverTheMedian) {
  const Peaks peaks{/*copy_gbs=*/100, /*matmul_tflops=*/2, "", ""};
  BenchResult r;
  r.timing = summarize({2.0});  // ms
  r.cost = {/*bytes=*/100'000'000, /*flops=*/1'000'000'000};  // floors: 1 ms of copy, 0.5 ms of matmul
  fill_rates(r, peaks);
  EXPECT_DOUBLE_EQ(r.gbs, 50);     // 1e8 B / 2 ms
  EXPECT_DOUBLE_EQ(r.tflops, 0.5);  // 1e9 FLOP / 2 ms
  EXPECT_EQ(r.bound, "memory");
  EXPECT_DOUBLE_EQ(r.fraction_of_peak, 0.5);
  r.cost.flops = 8'000'000'000;  // now 4 ms of matmul: compute-bound, 4 / 2 ms
  fill_rates(r, peaks);
  EXPECT_EQ(r.bound, "compute");
  EXPECT_DOUBLE_EQ(r.fraction_of_peak, 2.0);
}

// ---- the command --------------------------------------------------------------------------------

nlohmann::json bench_json(const std::string& args, const fs::path& file) {
  const auto r = run_cli("bench " + args + " --json " + file.string());
  EXPECT_EQ(r.exit_code, 0) << r.out;
  return nlohmann::json::parse(read_text(file));
}

ScanShape parse_shape(const std::string& label) {
  std::smatch m;
  ScanShape s;
  if (std::regex_match(label, m, std::regex(R"(b(\d+) L(\d+) h(\d+) p(\d+) g(\d+) n(\d+))"))) {
    s = {std::stoll(m[1]), std::stoll(m[2]), std::stoll(m[3]), std::stoll(m[4]), std::stoll(m[5]), std::stoll(m[6]), 0};
  } else if (std::regex_match(label, m, std::regex(R"(b(\d+) h(\d+) p(\d+) g(\d+) n(\d+))"))) {
    s = {std::stoll(m[1]), 1, std::stoll(m[2]), std::stoll(m[3]), std::stoll(m[4]), std::stoll(m[5]), 0};
  } else {
    ADD_FAILURE() << "shape '" << label << "' is not b<B> [L<L>] h<H> p<P> g<G> n<N>";
  }
  return s;
}

TEST(BenchCommand, TheJsonReportHasEveryFieldWithSaneValues) {
  const fs::path dir = fresh_dir("bench", "json");
  const nlohmann::json j = bench_json("--what all --path chunked --reps 4 --warmup 1 --model " + model_dir("tiny").string(),
                                      dir / "bench.json");
  for (const char* key : {"device", "date", "command", "commit", "path", "model"}) {
    ASSERT_TRUE(j.contains(key) && j[key].is_string() && !j[key].get<std::string>().empty()) << key;
  }
  EXPECT_THAT(j["device"].get<std::string>(), HasSubstr("CPU"));
  EXPECT_TRUE(std::regex_match(j["date"].get<std::string>(), std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)")));
  // The command that reproduces the run, every option spelled out.
  EXPECT_THAT(j["command"].get<std::string>(), HasSubstr("mambadiff bench --what all --path chunked --model "));
  EXPECT_THAT(j["command"].get<std::string>(), HasSubstr(" --reps 4 --warmup 1 --json "));
  const double copy = j.at("copy_bandwidth_gbs"), matmul = j.at("matmul_tflops");
  EXPECT_GT(copy, 0.1);   // GB/s: any machine copies faster than 100 MB/s
  EXPECT_LT(copy, 1e5);   // and slower than 100 TB/s
  EXPECT_GT(matmul, 1e-4);
  EXPECT_LT(matmul, 1e4);

  std::map<std::string, int> rows_of;
  const Mamba2Checkpoint tiny = Mamba2Checkpoint::load(model_dir("tiny"));
  for (const auto& r : j.at("results")) {
    const std::string what = r.at("what"), shape = r.at("shape");
    SCOPED_TRACE(what + " " + shape);
    ++rows_of[what];
    for (const char* key : {"what", "shape", "dtype", "path", "median_ms", "p10_ms", "p90_ms", "bytes", "flops", "gbs",
                            "tflops", "fraction_of_peak"}) {
      EXPECT_TRUE(r.contains(key)) << key;
    }
    EXPECT_EQ(r.at("path"), "chunked");
    const double median = r.at("median_ms"), p10 = r.at("p10_ms"), p90 = r.at("p90_ms");
    EXPECT_GT(p10, 0);
    EXPECT_LE(p10, median);
    EXPECT_LE(median, p90);
    EXPECT_LE(r.at("min_ms").get<double>(), p10);
    EXPECT_GE(r.at("max_ms").get<double>(), p90);
    EXPECT_EQ(r.at("reps"), 4);
    const double bytes = r.at("bytes"), flops = r.at("flops");
    EXPECT_NEAR(r.at("gbs").get<double>(), bytes / median / 1e6, 1e-9 * bytes / median);  // bytes per ms -> GB/s
    EXPECT_NEAR(r.at("tflops").get<double>(), flops / median / 1e9, 1e-9 * flops / median);
    const double floor_ms = std::max(bytes / copy / 1e6, flops / matmul / 1e9);
    EXPECT_NEAR(r.at("fraction_of_peak").get<double>(), floor_ms / median, 1e-9);
    // The CPU's chunked ops return y in fp32 (engine/aten_ops.h).
    if (what == "scan") {
      const ScanShape s = parse_shape(shape);
      ScanShape q = s;
      q.chunk = r.at("chunk");
      EXPECT_EQ(r.at("bytes").get<int64_t>(), scan_bytes_by_tensor(s, 2, 4));
      EXPECT_EQ(r.at("flops").get<int64_t>(), scan_flops_by_chunk(q));
    } else if (what == "state-update") {
      EXPECT_EQ(r.at("bytes").get<int64_t>(), state_update_bytes_by_tensor(parse_shape(shape), 2, 4));
    } else if (what == "decode") {
      EXPECT_EQ(r.at("bytes").get<int64_t>(), decode_bytes_from_the_model(tiny));
      EXPECT_EQ(r.at("variant"), "eager");
    } else if (what == "optimize") {
      EXPECT_THAT(shape, HasSubstr("delta@1"));  // two thirds of tiny's 2 layers
    }
  }
  // Three scan shapes, two state-update batches, one decode (no CUDA graph on the CPU), one optimize.
  EXPECT_EQ(rows_of, (std::map<std::string, int>{{"scan", 3}, {"state-update", 2}, {"decode", 1}, {"optimize", 1}}));
}

TEST(BenchCommand, EachItemRunsAloneAndReportsOnlyItself) {
  const fs::path dir = fresh_dir("bench", "items");
  for (const std::string what : {"scan", "state-update", "decode", "optimize"}) {
    SCOPED_TRACE(what);
    // No --model: decode and optimize build their small model in memory.
    const nlohmann::json j = bench_json("--what " + what + " --reps 2 --warmup 0", dir / (what + ".json"));
    ASSERT_FALSE(j.at("results").empty());
    for (const auto& r : j.at("results")) EXPECT_EQ(r.at("what"), what);
  }
}

TEST(BenchCommand, BadUsageIsExitTwoWithOneLineNamingTheOption) {
  const fs::path dir = fresh_dir("bench", "bad");
  test_support::write_text(dir / "a_file", "not a folder");
  const fs::path json = dir / "out.json";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--what scna", "--what"},
      {"--what ''", "--what"},
      {"--reps 0", "--reps"},
      {"--reps -3", "--reps"},
      {"--reps nan", "--reps"},
      {"--warmup -1", "--warmup"},
      {"--path reference", "--path"},
      {"--path plain-float32", "--path"},
      {"--path nowhere", "--path"},
      {"--json " + (dir / "no_such_folder" / "b.json").string(), "--json"},
      {"--json " + (dir / "a_file" / "b.json").string(), "--json"},
      {"--json " + dir.string(), "--json"},  // a folder, not a file
      {"--what decode --model " + (dir / "no_model").string(), (dir / "no_model").string()},
  };
  for (const auto& [args, needle] : cases) {
    SCOPED_TRACE(args);
    // Each case adds the option under test to a quick valid run that would write `json`.
    const bool has_what = args.find("--what") != std::string::npos, has_json = args.find("--json") != std::string::npos;
    const auto r = run_cli("bench --reps 1 --warmup 0 " + args + (has_what ? "" : " --what scan") +
                           (has_json ? "" : " --json " + json.string()));
    EXPECT_EQ(r.exit_code, 2) << r.out;
    EXPECT_THAT(r.out, HasSubstr(needle));
    EXPECT_EQ(test_support::lines_of(r.out).size(), 1u) << r.out;
    EXPECT_FALSE(fs::exists(json)) << "a report was written for a run that failed";
  }
  if (!torch::cuda::is_available()) {  // no GPU here: the GPU paths are unavailable, not a pass
    const auto r = run_cli("bench --what scan --path cuda");
    EXPECT_EQ(r.exit_code, 2) << r.out;
    EXPECT_THAT(r.out, HasSubstr("--path cuda"));
  }
}

}  // namespace
}  // namespace mambadiff::bench
