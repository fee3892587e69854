// Fuzz target parse_config: any bytes as a model's config.json, with the checkpoint loader
// behind it (Mamba2Checkpoint::load over a fixed small model.safetensors written at start-up), so
// configs that parse go on to size, allocate and check every tensor. A result or a clean
// InputError; anything else is a finding.
#include <torch/torch.h>

#include "engine/checkpoint.h"
#include "engine/errors.h"
#include "fuzz/fuzz_support.h"
#include "tests/random_model.h"

namespace parse_config_target {
namespace {

// The model behind the config: the seed corpus's config.json is this model's (tools/
// make_fuzz_corpus.py writes it with the same spec), so mutations start from a loadable pair.
const std::filesystem::path& model_dir() {
  static const std::filesystem::path dir = [] {
    mambadiff::props::ModelSpec spec;  // its defaults: V=16, D=8, 1 layer, H=1, P=8, N=1
    spec.seed = 1;
    const auto d = mambadiff::fuzz::scratch_dir() / "config-model";
    mambadiff::props::make_checkpoint(spec).save(d);
    return d;
  }();
  return dir;
}

}  // namespace
}  // namespace parse_config_target

MAMBADIFF_FUZZ_INITIALIZE(parse_config) {
  using namespace parse_config_target;  // this target's helpers
  torch::set_num_threads(1);
  model_dir();
  return 0;
}

MAMBADIFF_FUZZ_TEST_ONE_INPUT(parse_config) {
  using namespace parse_config_target;  // this target's helpers
  using namespace mambadiff;
  fuzz::write_bytes(model_dir() / "config.json", data, size);
  try {
    const Mamba2Checkpoint ck = Mamba2Checkpoint::load(model_dir());
    // A loaded config is a valid one: validate() accepting it again is part of the contract.
    ck.config.validate("parse_config");
  } catch (const InputError&) {
    return 0;  // rejected with a message naming the file and key
  }
  return 0;
}
