// Fuzz target parse_safetensors: any bytes as a .safetensors file -> safetensors::File::open and
// every tensor read back, or a clean InputError. Anything else (another exception, a crash, a
// leak, undefined behaviour, a hang) is a finding: libFuzzer reports an escaped exception as a
// crash.
#include <torch/torch.h>

#include "engine/errors.h"
#include "engine/safetensors.h"
#include "fuzz/fuzz_support.h"

MAMBADIFF_FUZZ_INITIALIZE(parse_safetensors) {
  torch::set_num_threads(1);
  return 0;
}

MAMBADIFF_FUZZ_TEST_ONE_INPUT(parse_safetensors) {
  using namespace mambadiff;
  const auto file = fuzz::scratch_dir() / "input.safetensors";
  fuzz::write_bytes(file, data, size);
  try {
    const auto st = safetensors::File::open(file);
    for (const std::string& name : st.names()) {
      const torch::Tensor t = st.tensor(name);
      const auto& e = st.entry(name);
      // The tensor is what the header promised: its shape and exactly its byte range.
      if (t.sizes().vec() != e.shape || t.nbytes() != e.end - e.begin) __builtin_trap();
    }
  } catch (const InputError&) {
    return 0;  // rejected with a message naming the file: the contract for bad input
  }
  return 0;
}
