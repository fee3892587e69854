// `bench`: our kernels and whole-model figures against the machine's measured peaks (bench/,
// docs/bench.md).
#include <fmt/format.h>
#include <torch/cuda.h>

#include <limits>

#include "bench/benchmark.h"
#include "cli/commands.h"
#include "cli/option_checks.h"
#include "engine/output_file.h"
#include "harness/path_registry.h"

namespace mambadiff::cli {

void add_bench_command(CLI::App& app, int& exit_code) {
  struct Args {
    std::string what = "all", path, model, json;
    int64_t reps = 30, warmup = 5;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("bench", "Time our kernels and the whole model against the machine's measured peaks");
  std::vector<std::string> choices = bench::item_names();
  choices.push_back("all");
  cmd->add_option("--what", a->what, "scan | state-update | decode | optimize | all")->check(CLI::IsMember(choices));
  cmd->add_option("--path", a->path,
                  "Execution path: cuda (default with a CUDA device), chunked-gpu, chunked (default without one)");
  cmd->add_option("--model", a->model,
                  "Model directory for decode and optimize (default: random weights built in memory, the 130m shape on a GPU)");
  cmd->add_option("--reps", a->reps, "Timed calls per row (optimizer steps for optimize)")
      ->check(number_in(1, std::numeric_limits<int32_t>::max()));
  cmd->add_option("--warmup", a->warmup, "Untimed calls before them")->check(number_in(0, std::numeric_limits<int32_t>::max()));
  cmd->add_option("--json", a->json, "Also write the report as JSON (atomically)");
  cmd->callback([a, &exit_code] {
    bench::BenchOptions o;
    o.items = a->what == "all" ? bench::item_names() : std::vector<std::string>{a->what};
    // Default: the fused kernels where they run, else the ATen path on the GPU, else on the CPU.
    o.path = a->path;
    for (const char* candidate : {"cuda", "chunked-gpu", "chunked"}) {
      if (o.path.empty() && path_available(candidate, torch::kFloat32)) o.path = candidate;
    }
    o.model = a->model;
    o.reps = a->reps;
    o.warmup = a->warmup;
    o.command = fmt::format("mambadiff bench --what {} --path {}{} --reps {} --warmup {}{}", a->what, o.path,
                            a->model.empty() ? "" : " --model " + a->model, a->reps, a->warmup,
                            a->json.empty() ? "" : " --json " + a->json);
    if (!a->json.empty()) require_output_folder(a->json, "--json");
    bench::check_options(o);
    bool header = false;
    const bench::BenchReport report = bench::run_benchmark(o, [&header](const bench::BenchResult& r) {
      if (!header) fmt::print("{}", bench::table_header());
      header = true;
      fmt::print("{}", bench::table_row(r));
      std::fflush(stdout);
    });
    fmt::print("device: {}; copy {:.1f} GB/s ({}), matmul {:.2f} TFLOP/s ({}); {}\n", report.device,
               report.peaks.copy_gbs, report.peaks.copy_what, report.peaks.matmul_tflops, report.peaks.matmul_what,
               report.date);
    fmt::print("model: {}\n", report.model);
    for (const auto& note : report.notes) fmt::print("note: {}\n", note);
    if (!a->json.empty()) write_text_atomically(a->json, bench::to_json(report).dump(1) + "\n");
    exit_code = 0;
  });
}

}  // namespace mambadiff::cli
