// Fuzz target parse_case: any bytes as a case's case.json (beside a valid scenario.json) ->
// DivergenceCase::load, or a clean InputError naming the file and key.
#include <torch/torch.h>

#include "engine/errors.h"
#include "fuzz/fuzz_support.h"
#include "harness/divergence_case.h"

namespace parse_case_target {
namespace {

const std::filesystem::path& case_dir() {
  static const std::filesystem::path dir = [] {
    const auto d = mambadiff::fuzz::scratch_dir() / "case";
    std::filesystem::create_directories(d);
    const std::string scenario =
        R"({"format": "mambadiff.scenario.v1", "model": "model", "dtype": "float32",)"
        R"( "ops": [{"op": "forward", "tokens": [[1, 2, 3]]}]})";
    mambadiff::fuzz::write_bytes(d / "scenario.json", reinterpret_cast<const uint8_t*>(scenario.data()),
                                 scenario.size());
    return d;
  }();
  return dir;
}

}  // namespace
}  // namespace parse_case_target

MAMBADIFF_FUZZ_INITIALIZE(parse_case) {
  using namespace parse_case_target;  // this target's helpers
  torch::set_num_threads(1);
  case_dir();
  return 0;
}

MAMBADIFF_FUZZ_TEST_ONE_INPUT(parse_case) {
  using namespace parse_case_target;  // this target's helpers
  using namespace mambadiff;
  fuzz::write_bytes(case_dir() / "case.json", data, size);
  try {
    DivergenceCase::load(case_dir());
  } catch (const InputError&) {
    return 0;  // rejected with a message naming the file and key
  }
  return 0;
}
