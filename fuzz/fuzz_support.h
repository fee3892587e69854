// What the fuzz targets share (docs/fuzz.md, "Targets and speed"): decoding fuzzer bytes, a
// scratch folder for the parsers' files, the environment of the differential targets
// (MAMBADIFF_FUZZ_MUTANT, MAMBADIFF_FUZZ_CASE_DIR) and the report of a finding (a
// mambadiff.case.v1 case, the signature line, then a trap so libFuzzer keeps the input).
//
// Every target is a thin entry: decode bytes, filter (each early return says why), call the
// library code the product runs. The same entry links into a libFuzzer binary (build-fuzz/) and
// into a plain replay main (fuzz/replay_main.cpp, the ordinary build, run by CTest).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "engine/checkpoint.h"
#include "harness/compare.h"
#include "harness/divergence_case.h"
#include "harness/scenario.h"

namespace mambadiff::fuzz {

// A target's two entry points:
//   MAMBADIFF_FUZZ_INITIALIZE(scan_diff) { ...; return 0; }
//   MAMBADIFF_FUZZ_TEST_ONE_INPUT(scan_diff) { ... data, size ...; return 0; }
// In a libFuzzer build they are libFuzzer's LLVMFuzzerInitialize and LLVMFuzzerTestOneInput, one
// target per binary. In the ordinary build (MAMBADIFF_FUZZ_REPLAY) every target links into ONE
// plain program, `fuzz_replay TARGET FILE|DIR...` (fuzz/replay_main.cpp): there the entries are
// named for their target and register themselves in its table.
using FuzzInitialize = int (*)(int*, char***);
using FuzzTestOneInput = int (*)(const uint8_t*, size_t);
bool register_replay_target(const char* name, FuzzInitialize initialize, FuzzTestOneInput test_one_input);

#ifdef MAMBADIFF_FUZZ_REPLAY
#define MAMBADIFF_FUZZ_INITIALIZE(target) int mambadiff_fuzz_initialize_##target(int*, char***)
#define MAMBADIFF_FUZZ_ENTRY_(target) int mambadiff_fuzz_test_one_input_##target(const uint8_t* data, size_t size)
#define MAMBADIFF_FUZZ_REGISTER_(target)                                                                   \
  MAMBADIFF_FUZZ_ENTRY_(target);                                                                           \
  [[maybe_unused]] static const bool mambadiff_fuzz_registered_##target =                                  \
      ::mambadiff::fuzz::register_replay_target(#target, mambadiff_fuzz_initialize_##target,               \
                                                mambadiff_fuzz_test_one_input_##target);
#else
#define MAMBADIFF_FUZZ_INITIALIZE(target) extern "C" int LLVMFuzzerInitialize(int*, char***)
#define MAMBADIFF_FUZZ_ENTRY_(target) extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
#define MAMBADIFF_FUZZ_REGISTER_(target)
#endif
// The entry runs the target's body through run_entry (report_finding's keep-going mode).
#define MAMBADIFF_FUZZ_TEST_ONE_INPUT(target)                                                              \
  static int mambadiff_fuzz_body_##target(const uint8_t* data, size_t size);                               \
  MAMBADIFF_FUZZ_REGISTER_(target)                                                                         \
  MAMBADIFF_FUZZ_ENTRY_(target) { return ::mambadiff::fuzz::run_entry(mambadiff_fuzz_body_##target, data, size); } \
  static int mambadiff_fuzz_body_##target(const uint8_t* data, size_t size)

// Runs a target's body. With MAMBADIFF_FUZZ_KEEP_GOING=1 a finding (report_finding) prints its
// lines and ends only this input, not the process: for measuring coverage over a fixed time (the
// GPU kernel-counter campaign) where the first divergence would otherwise end the run. Never set
// by `mambadiff fuzz`: there every finding traps, so libFuzzer keeps the input.
int run_entry(int (*body)(const uint8_t*, size_t), const uint8_t* data, size_t size);

// Reads the fuzzer's bytes front to back; past the end every read gives 0, so any input decodes.
class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint8_t byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  // An integer in [lo, hi] (lo <= hi), from one byte.
  int64_t in_range(int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(byte()) % (hi - lo + 1); }
  uint32_t u32() {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v = (v << 8) | byte();
    return v;
  }
  // One of `choices` (not empty).
  template <typename T>
  const T& pick(const std::vector<T>& choices) {
    return choices[byte() % choices.size()];
  }
  size_t remaining() const { return pos_ < size_ ? size_ - pos_ : 0; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// A folder of this process for the files a parser target hands the product (created once, removed
// at exit). /dev/shm when there is one: a write there costs no disk I/O.
const std::filesystem::path& scratch_dir();

// Writes bytes to `file` (replacing it).
void write_bytes(const std::filesystem::path& file, const uint8_t* data, size_t size);

// The mutant named by MAMBADIFF_FUZZ_MUTANT, or nullopt. Read once; an unknown name prints one
// line and exits 2 (called from each differential target's LLVMFuzzerInitialize).
const std::optional<std::string>& fuzz_mutant();

// What a differential target's LLVMFuzzerInitialize does: one intra-op thread (tensors of tens of
// elements: threads cost more than they give), MAMBADIFF_FUZZ_MUTANT read (exit 2 if unknown), the
// mutant catalog plugged into evaluate_path().
void init_differential_target();

// The paths a differential target tests: MAMBADIFF_FUZZ_MUTANT's mutant alone, else `chunked` and,
// with a CUDA device, whichever of `chunked-gpu` and `cuda` run `dtype` here.
std::vector<std::string> paths_under_test(torch::ScalarType dtype);


// The finding's numeric signature: `target|op|layer|tensor|branch` (COMMON fuzz interface).
struct Signature {
  std::string target, op, layer, tensor, branch;
  std::string line() const { return target + "|" + op + "|" + layer + "|" + tensor + "|" + branch; }
};

// A divergence found by a differential target: when MAMBADIFF_FUZZ_CASE_DIR is set, writes the
// case (the model written beside it, `scenario` run on `run`'s two paths; expected "agree", so
// `repro` exits 1 while the bug is there) into a new subfolder of it, atomically (written under a
// hidden name, then renamed); then prints `mambadiff-fuzz-signature: <sig>` and the divergence on
// stderr and traps (or, under MAMBADIFF_FUZZ_KEEP_GOING, ends the input: see run_entry). Never returns.
[[noreturn]] void report_finding(const Signature& sig, const std::string& detail, const Scenario* scenario,
                                 const Mamba2Checkpoint* ck, const CaseRun* run);

}  // namespace mambadiff::fuzz
