// A Δ saved by the optimizer adds unchanged to a HuggingFace cache's recurrent_states
// (tools/hf_apply_delta.py) and gives the same target rank there as in our deployment.
// Models with an infinite time_step_limit only: transformers' decode does not clamp dt
// (hf_parity_test.cpp), so on `limited` HF's deployment is a different computation.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "optimizer/real_cache_optimizer.h"

namespace mambadiff {
namespace {

namespace fs = std::filesystem;

std::string run_capture(const std::string& cmd, int* status) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  std::array<char, 4096> buf{};
  while (fgets(buf.data(), buf.size(), p)) out += buf.data();
  *status = pclose(p);
  return out;
}

TEST(DeltaTransfer, HfTransformersFindsTheSameTargetRank) {
  const fs::path dir = fs::path(MAMBADIFF_TEST_TMP) / "delta_transfer";
  fs::create_directories(dir);
  for (const char* name : {"tiny", "grouped"}) {
    const fs::path model = fs::path(MAMBADIFF_SOURCE_DIR) / "corpus/models" / name;
    const Mamba2Checkpoint ck = Mamba2Checkpoint::load(model);
    OptimizeOptions o;
    o.prompt = {3, 1, 4, 1, 5, 9, 2, 6};
    o.target = {7, 11};
    o.layers = {0, ck.config.num_hidden_layers - 1};
    o.loss = "margin";
    o.margin = 0.5;  // a margin, so rounding differences between implementations cannot flip the rank
    const OptimizeResult r = optimize_delta(ck, o);
    ASSERT_EQ(r.deployed.rank, 1) << name;
    const fs::path file = dir / (std::string(name) + ".safetensors");
    save_delta(file.string(), r, o, ck);
    int status = -1;
    const std::string out = run_capture(std::string(MAMBADIFF_PYTHON) + " " + MAMBADIFF_SOURCE_DIR +
                                            "/tools/hf_apply_delta.py --model " + model.string() +
                                            " --prompt-tokens 3,1,4,1,5,9,2,6 --target 7,11 --delta " + file.string(),
                                        &status);
    ASSERT_EQ(status, 0) << out;
    const auto j = nlohmann::json::parse(out);
    EXPECT_EQ(j["rank"].get<int64_t>(), r.deployed.rank) << name << ": " << out;
    EXPECT_NEAR(j["probability"].get<double>(), r.deployed.probability, 1e-4) << name;
    // Without the Δ the target is not rank 1 there either: the transfer is the Δ's doing.
    EXPECT_GT(deploy_delta(ck, "chunked", o.prompt, o.target, {}).rank, 1) << name;
  }
}

}  // namespace
}  // namespace mambadiff
