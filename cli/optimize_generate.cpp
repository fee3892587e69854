// `optimize` (the real-cache optimizer, SPEC §8) and `generate` (greedy decoding with a Δ).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <nlohmann/json.hpp>
#include <limits>
#include <optional>
#include <sstream>

#include "cli/commands.h"
#include "cli/interrupt.h"
#include "cli/option_checks.h"
#include "engine/errors.h"
#include "engine/output_file.h"
#include "harness/check_suite.h"
#include "harness/corpus_location.h"
#include "harness/path_registry.h"
#include "optimizer/real_cache_optimizer.h"

namespace mambadiff::cli {

namespace {

std::vector<int64_t> parse_ids(const std::string& text, const char* option) {
  std::vector<int64_t> ids;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');) {
    try {
      size_t used = 0;
      ids.push_back(std::stoll(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw InputError(fmt::format("{} '{}': '{}' is not a token id", option, text, item));
    }
  }
  return ids;
}

// Byte-level models (vocab 256): the text's UTF-8 bytes are the tokens.
std::vector<int64_t> text_to_bytes(const std::string& text, const Mamba2Config& c, const char* option) {
  if (c.vocab_size != 256) {
    throw InputError(fmt::format("{}: text needs a byte-level model (vocab_size 256), this one has {}", option, c.vocab_size));
  }
  std::vector<int64_t> ids;
  for (unsigned char ch : text) ids.push_back(ch);
  return ids;
}

std::string bytes_to_text(const std::vector<int64_t>& ids) {
  std::string s;
  for (int64_t id : ids) s += (id >= 32 && id < 127) ? static_cast<char>(id) : '?';
  return s;
}

std::filesystem::path default_byte_model() {
  return corpus_dir() / "models" / "bytes";
}

struct TokenArgs {
  std::string model, prompt_ids, prompt_text;
  std::vector<int64_t> prompt(const Mamba2Config& c) const {
    if (!prompt_ids.empty() && !prompt_text.empty()) throw InputError("give --prompt-tokens or --prompt, not both");
    if (!prompt_text.empty()) return text_to_bytes(prompt_text, c, "--prompt");
    if (prompt_ids.empty()) throw InputError("missing --prompt-tokens IDS (or --prompt TEXT)");
    return parse_ids(prompt_ids, "--prompt-tokens");
  }
};

}  // namespace

void add_optimize_command(CLI::App& app, int& exit_code) {
  struct Args : TokenArgs {
    OptimizeOptions opt;
    std::string target_ids, target_text, layers = "0", out, json;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("optimize", "Find a state perturbation on the real cache and prove it deploys (SPEC §8)");
  cmd->add_option("--model", a->model, "Model directory (default: the embedded byte-level model)");
  cmd->add_option("--prompt-tokens", a->prompt_ids, "Prompt token ids, comma-separated (>= 2)");
  cmd->add_option("--prompt", a->prompt_text, "Prompt text (byte-level models)");
  cmd->add_option("--target", a->target_ids, "Target token ids, comma-separated, or text with --target-text");
  cmd->add_option("--target-text", a->target_text, "Target text (byte-level models)");
  cmd->add_option("--layers", a->layers, "Layers to perturb, comma-separated");
  cmd->add_option("--loss", a->opt.loss, "ce | margin");
  cmd->add_option("--margin", a->opt.margin, "Required logit margin over the runner-up")->check(number_in(0));
  cmd->add_option("--budget-l2", a->opt.budget_l2, "L2 budget per layer (0 = none)")->check(number_in(0));
  cmd->add_option("--budget-linf", a->opt.budget_linf, "L-inf budget (0 = none)")->check(number_in(0));
  cmd->add_option("--optimizer", a->opt.optimizer, "adam | pgd");
  cmd->add_option("--lr", a->opt.lr, "Learning rate / PGD step")
      ->check(number_in(0, std::numeric_limits<double>::max(), /*min_exclusive=*/true));
  cmd->add_option("--steps", a->opt.steps, "Maximum steps")->check(number_in(0));
  cmd->add_option("--seed", a->opt.seed, "Seed (recorded in the Δ file)")->check(number_in(0));
  cmd->add_option("--path", a->opt.path, "Execution path the loop and deployment use (chunked, chunked-gpu)");
  cmd->add_flag("--no-cuda-graph{false}", a->opt.cuda_graph,
                "On a GPU path, run every iteration eagerly instead of replaying a captured CUDA graph");
  cmd->add_option("--out", a->out, "Output Δ .safetensors")->required();
  cmd->add_option("--json", a->json, "Write the report as JSON (and print no progress)");
  cmd->callback([a, &exit_code] {
    const auto model = a->model.empty() ? default_byte_model() : std::filesystem::path(a->model);
    const Mamba2Checkpoint ck = Mamba2Checkpoint::load(model);
    OptimizeOptions opt = a->opt;
    opt.prompt = a->prompt(ck.config);
    if (!a->target_text.empty()) {
      opt.target = text_to_bytes(a->target_text, ck.config, "--target-text");
    } else if (!a->target_ids.empty() && ck.config.vocab_size == 256 &&
               a->target_ids.find_first_not_of("0123456789,") != std::string::npos) {
      opt.target = text_to_bytes(a->target_ids, ck.config, "--target");  // " dog" on a byte model
    } else {
      opt.target = parse_ids(a->target_ids, "--target");
    }
    opt.layers = parse_ids(a->layers, "--layers");
    const bool quiet = !a->json.empty();
    InterruptScope ctrl_c;
    OptimizeResult r;
    try {
      r = optimize_delta(
          ck, opt,
          [quiet](const StepReport& s) {
            if (!quiet) {
              fmt::print("step {:>4}  loss {:>9.4f}  rank {:>5}  margin {:>8.3f}  |delta| {:.4f}\n", s.step, s.loss,
                         s.rank, s.margin, s.delta_l2);
            }
          },
          ctrl_c.flag_ptr());
    } catch (const ZeroDeltaGateFailed& e) {
      fmt::print(stderr, "mambadiff: {}\n", e.what());
      exit_code = 1;
      return;
    }
    ctrl_c.end();
    if (r.nonfinite_step >= 0) {
      fmt::print(stderr,
                 "mambadiff: optimize failed: the loss or delta became NaN or infinite at step {} (try a smaller --lr "
                 "or a --budget-l2); no delta written\n",
                 r.nonfinite_step);
      exit_code = 1;
      return;
    }
    save_delta(a->out, r, opt, ck);
    nlohmann::json by_path = r.deployed_rank_by_path, l2;
    for (const auto& [l, n] : r.delta_l2_by_layer) l2[std::to_string(l)] = n;
    const nlohmann::json j = {
        {"simulated_rank", r.simulated.rank}, {"deployed_rank", r.deployed.rank},
        {"simulated_probability", r.simulated.probability}, {"deployed_probability", r.deployed.probability},
        {"simulated_margin", r.simulated.margin}, {"deployed_margin", r.deployed.margin},
        {"deployed_rank_by_path", by_path}, {"skipped_paths", r.skipped_paths}, {"steps", r.steps},
        {"final_loss", r.final_loss}, {"delta_l2_by_layer", l2}, {"restore_bit_identical", r.restore_bit_identical},
        {"zero_delta_gate_passed", r.zero_delta_gate_passed}, {"interrupted", r.interrupted},
        {"seconds_per_step", r.seconds_per_step}, {"cuda_graph", r.cuda_graph},
        {"generated_without_delta", r.generated_without_delta},
        {"generated_with_delta", r.generated_with_delta}, {"path", opt.path}, {"delta_file", a->out}};
    if (!quiet) {
      fmt::print("{:<12} {:>10} {:>10}\n", "", "simulated", "deployed");
      fmt::print("{:<12} {:>10} {:>10}\n", "rank", r.simulated.rank, r.deployed.rank);
      fmt::print("{:<12} {:>10.4f} {:>10.4f}\n", "probability", r.simulated.probability, r.deployed.probability);
      fmt::print("{:<12} {:>10.4f} {:>10.4f}\n", "margin", r.simulated.margin, r.deployed.margin);
      for (const auto& [p, rank] : r.deployed_rank_by_path) fmt::print("deployed rank on {}: {}\n", p, rank);
      for (const auto& [p, why] : r.skipped_paths) fmt::print("deployed rank on {}: skipped ({})\n", p, why);
      fmt::print("restore bit-identical: {}   steps: {}   {:.2f} ms/step{}\n", r.restore_bit_identical, r.steps,
                 1e3 * r.seconds_per_step, r.cuda_graph ? " (CUDA graph)" : "");
      if (ck.config.vocab_size == 256) {
        fmt::print("greedy without delta: \"{}\"\n", bytes_to_text(r.generated_without_delta));
        fmt::print("greedy with delta:    \"{}\"\n", bytes_to_text(r.generated_with_delta));
      } else {
        fmt::print("greedy without delta: {}\ngreedy with delta:    {}\n", fmt::join(r.generated_without_delta, ","),
                   fmt::join(r.generated_with_delta, ","));
      }
      fmt::print("delta -> {}\n", a->out);
    } else {
      write_text_atomically(a->json, j.dump(1) + "\n");
    }
    exit_code = (r.deployed.rank == 1 && r.simulated.rank == r.deployed.rank && !r.interrupted) ? 0 : 1;
  });
}

void add_generate_command(CLI::App& app, int& exit_code) {
  struct Args : TokenArgs {
    std::string delta, path = "chunked";
    int64_t tokens = 16;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("generate", "Greedy decoding after the prompt, with a saved Δ injected");
  cmd->add_option("--model", a->model, "Model directory (default: the embedded byte-level model)");
  cmd->add_option("--prompt-tokens", a->prompt_ids, "Prompt token ids, comma-separated (>= 2)");
  cmd->add_option("--prompt", a->prompt_text, "Prompt text (byte-level models)");
  cmd->add_option("--delta", a->delta, "Δ .safetensors from `optimize` (omit for none)");
  cmd->add_option("--tokens", a->tokens, fmt::format("Tokens to generate (at most {}; Ctrl-C stops early)", kMaxGenerateTokens))
      ->check(number_in(0, kMaxGenerateTokens));
  cmd->add_option("--path", a->path, "Execution path");
  cmd->callback([a, &exit_code] {
    const auto model = a->model.empty() ? default_byte_model() : std::filesystem::path(a->model);
    const Mamba2Checkpoint ck = Mamba2Checkpoint::load(model);
    const auto prompt = a->prompt(ck.config);
    if (prompt.size() < 2) throw InputError("generate: the prompt needs at least 2 tokens");
    for (int64_t t : prompt) {
      if (t < 0 || t >= ck.config.vocab_size) {
        throw InputError(fmt::format("generate: prompt token {} outside [0, vocab_size={})", t, ck.config.vocab_size));
      }
    }
    std::map<int64_t, torch::Tensor> delta;
    if (!a->delta.empty()) delta = load_delta(a->delta, ck.config);
    std::vector<int64_t> out;
    const InterruptScope ctrl_c;
    deploy_delta(ck, a->path, prompt, {prompt.back()}, delta, a->tokens, &out, ctrl_c.flag_ptr());
    fmt::print("{}\n", fmt::join(out, ","));
    if (ck.config.vocab_size == 256) fmt::print("\"{}\"\n", bytes_to_text(out));
    const bool interrupted = ctrl_c.interrupted() && static_cast<int64_t>(out.size()) < a->tokens;
    if (interrupted) fmt::print(stderr, "mambadiff: generate interrupted after {} of {} tokens\n", out.size(), a->tokens);
    exit_code = interrupted ? 1 : 0;
  });
}

}  // namespace mambadiff::cli
