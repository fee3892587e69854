// Fuzz target parse_scenario: any bytes as a mambadiff.scenario.v1 file -> Scenario::load (with
// a deltas file beside it for inject ops to name), or a clean InputError; a loaded scenario is
// written back and read again (the round trip the case writer relies on).
#include <torch/torch.h>

#include "engine/errors.h"
#include "engine/safetensors.h"
#include "fuzz/fuzz_support.h"
#include "harness/scenario.h"

namespace parse_scenario_target {
namespace {

const std::filesystem::path& work_dir() {
  static const std::filesystem::path dir = [] {
    const auto d = mambadiff::fuzz::scratch_dir() / "scenario";
    std::filesystem::create_directories(d);
    // d.safetensors: the deltas the seed scenarios' inject ops name ([H, P, N] and [B, H, P, N]).
    mambadiff::safetensors::write(d / "d.safetensors", {{"delta.0", torch::ones({1, 8, 1})},
                                                        {"delta.1", torch::ones({2, 1, 8, 1})}});
    return d;
  }();
  return dir;
}

}  // namespace
}  // namespace parse_scenario_target

MAMBADIFF_FUZZ_INITIALIZE(parse_scenario) {
  using namespace parse_scenario_target;  // this target's helpers
  torch::set_num_threads(1);
  work_dir();
  return 0;
}

MAMBADIFF_FUZZ_TEST_ONE_INPUT(parse_scenario) {
  using namespace parse_scenario_target;  // this target's helpers
  using namespace mambadiff;
  const auto file = work_dir() / "scenario.json";
  fuzz::write_bytes(file, data, size);
  Scenario s;
  try {
    s = Scenario::load(file);
  } catch (const InputError&) {
    return 0;  // rejected with a message naming the file, op and key
  }
  // What loaded must save and load again to the same ops.
  const auto again = work_dir() / "again.json";
  s.save(again);
  const Scenario back = Scenario::load(again);
  if (back.ops.size() != s.ops.size() || back.dtype != s.dtype) __builtin_trap();
  return 0;
}
