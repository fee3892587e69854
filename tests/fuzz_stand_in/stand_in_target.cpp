// A stand-in libFuzzer target for the tests of `mambadiff fuzz` (tests/fuzz_campaign_test.cpp),
// built with clang -fsanitize=fuzzer,address,undefined under a real target's name. It follows the
// fuzz interface of fuzz/ (COMMON.md) with two planted bugs that libFuzzer finds in seconds:
//   * the bytes "MD" anywhere: a "divergence": prints the signature line, writes a stand-in
//     mambadiff.case.v1 case into a new subfolder of MAMBADIFF_FUZZ_CASE_DIR (if set), traps;
//   * the bytes "QZ" anywhere: a null write (an AddressSanitizer SEGV, no signature);
//   * the bytes "MX" anywhere while MAMBADIFF_FUZZ_MUTANT names a mutant: the mutant's divergence
//     (another signature), for the kill matrix's crediting; STAND_IN_NO_MUTANT_BUG=1 disarms it,
//     STAND_IN_NO_PRODUCT_BUG=1 disarms "MD" (the bug the product has with or without a mutant).
// STAND_IN_CLEAN=1 in the environment disarms all three (the same branches, no finding).
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

void write_case(const char* dir) {
  static int serial = 0;
  const std::string tmp = std::string(dir) + "/.case-" + std::to_string(getpid()) + "-" + std::to_string(serial);
  const std::string final_dir = std::string(dir) + "/case-" + std::to_string(getpid()) + "-" + std::to_string(serial++);
  mkdir(tmp.c_str(), 0755);
  if (FILE* f = std::fopen((tmp + "/case.json").c_str(), "w")) {
    std::fputs("{\"format\": \"mambadiff.case.v1\", \"origin\": \"fuzz stand-in\"}\n", f);
    std::fclose(f);
  }
  std::rename(tmp.c_str(), final_dir.c_str());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool clean = std::getenv("STAND_IN_CLEAN") != nullptr;
  static const bool no_product_bug = std::getenv("STAND_IN_NO_PRODUCT_BUG") != nullptr;
  static const bool mutant = [] {
    const char* m = std::getenv("MAMBADIFF_FUZZ_MUTANT");
    return m && *m && !std::getenv("STAND_IN_NO_MUTANT_BUG");
  }();
  for (size_t i = 0; i + 1 < size; ++i) {
    if (data[i] == 'M' && data[i + 1] == 'D' && !clean && !no_product_bug) {
      if (const char* dir = std::getenv("MAMBADIFF_FUZZ_CASE_DIR")) write_case(dir);
      std::fprintf(stderr, "mambadiff-fuzz-signature: scan_diff|ssd_scan|0|y|tail-tile\n");
      __builtin_trap();
    }
    if (data[i] == 'M' && data[i + 1] == 'X' && mutant && !clean) {
      if (const char* dir = std::getenv("MAMBADIFF_FUZZ_CASE_DIR")) write_case(dir);
      std::fprintf(stderr, "mambadiff-fuzz-signature: model_script|0:forward|0|logits|prefill\n");
      __builtin_trap();
    }
    if (data[i] == 'Q' && data[i + 1] == 'Z' && !clean) {
      volatile int* null_pointer = nullptr;
      *null_pointer = 1;
    }
  }
  return 0;
}
