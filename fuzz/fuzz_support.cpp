#include "fuzz/fuzz_support.h"

#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>

#include "engine/errors.h"
#include "engine/safetensors.h"
#include "engine/output_file.h"
#include "harness/path_registry.h"
#include "mutants/catalog.h"

namespace mambadiff::fuzz {

namespace fs = std::filesystem;

namespace {

fs::path make_scratch_dir() {
  const fs::path shm = "/dev/shm";
  std::error_code ec;
  const fs::path base = fs::is_directory(shm, ec) && access(shm.c_str(), W_OK) == 0 ? shm : fs::temp_directory_path();
  std::string templ = (base / "mambadiff-fuzz-XXXXXX").string();
  if (!mkdtemp(templ.data())) {
    std::fprintf(stderr, "fuzz: cannot create a scratch folder under %s\n", base.c_str());
    std::exit(3);
  }
  return templ;
}

void remove_scratch_dir() {
  std::error_code ec;
  fs::remove_all(scratch_dir(), ec);
}

}  // namespace

const fs::path& scratch_dir() {
  static const fs::path dir = make_scratch_dir();
  // Registered once `dir` is constructed, so it runs before `dir` is destroyed at exit.
  static const bool cleanup_registered = std::atexit(remove_scratch_dir) == 0;
  (void)cleanup_registered;
  return dir;
}

void write_bytes(const fs::path& file, const uint8_t* data, size_t size) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out) {
    std::fprintf(stderr, "fuzz: cannot write %s\n", file.c_str());
    std::exit(3);
  }
}

const std::optional<std::string>& fuzz_mutant() {
  static const std::optional<std::string> name = []() -> std::optional<std::string> {
    const char* env = std::getenv("MAMBADIFF_FUZZ_MUTANT");
    if (!env || !*env) return std::nullopt;
    try {
      return mutants::find_mutant(env).path_name();
    } catch (const InputError& e) {
      std::fprintf(stderr, "MAMBADIFF_FUZZ_MUTANT: %s\n", first_line(e).c_str());
      std::exit(2);
    }
  }();
  return name;
}

void init_differential_target() {
  torch::set_num_threads(1);
  fuzz_mutant();
  mutants::install_mutant_paths();
}

std::vector<std::string> paths_under_test(torch::ScalarType dtype) {
  if (fuzz_mutant()) return {*fuzz_mutant()};
  std::vector<std::string> names = {"chunked"};
  if (torch::cuda::is_available()) {
    for (const char* gpu : {"chunked-gpu", "cuda"})
      if (path_available(gpu, dtype)) names.push_back(gpu);
  }
  return names;
}


namespace {

// Thrown by report_finding in keep-going mode, caught only by run_entry.
struct FindingReported {};

bool keep_going() {
  static const bool on = [] {
    const char* v = std::getenv("MAMBADIFF_FUZZ_KEEP_GOING");
    return v && std::string(v) == "1";
  }();
  return on;
}

// Writes the case; returns where, or an empty path (with the reason on stderr) when it could not.
fs::path write_case(const Signature& sig, const Scenario& scenario, const Mamba2Checkpoint& ck, const CaseRun& run) {
  const char* env = std::getenv("MAMBADIFF_FUZZ_CASE_DIR");
  if (!env || !*env) return {};
  static std::atomic<int> serial{0};
  const fs::path root = env;
  const std::string name = fmt::format("{}-{}-{}", case_dir_name(sig.line()), getpid(), serial++);
  const fs::path tmp = root / ("." + name + ".tmp");  // hidden until complete
  const fs::path dst = root / name;
  try {
    fs::create_directories(root);
    fs::remove_all(tmp);
    ck.save(tmp / "model");
    Scenario s = scenario;
    s.model_dir = tmp / "model";
    s.model = "model";
    const DivergenceCase c =
        make_case(s, ck, run, TolerancePolicy{}, "agree", fmt::format("fuzz {}: {}", sig.target, sig.line()));
    c.save(tmp, &run);
    fs::rename(tmp, dst);
    return dst;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mambadiff-fuzz: cannot write the case into %s: %s\n", root.c_str(), first_line(e).c_str());
    std::error_code ec;
    fs::remove_all(tmp, ec);
    return {};
  }
}

}  // namespace

void report_finding(const Signature& sig, const std::string& detail, const Scenario* scenario,
                    const Mamba2Checkpoint* ck, const CaseRun* run) {
  fs::path written;
  if (scenario && ck && run) written = write_case(sig, *scenario, *ck, *run);
  std::fprintf(stderr, "mambadiff-fuzz-signature: %s\n", sig.line().c_str());
  std::fprintf(stderr, "mambadiff-fuzz: %s\n", detail.c_str());
  if (!written.empty()) std::fprintf(stderr, "mambadiff-fuzz-case: %s\n", written.c_str());
  std::fflush(stderr);
  if (keep_going()) throw FindingReported{};
  __builtin_trap();
}

int run_entry(int (*body)(const uint8_t*, size_t), const uint8_t* data, size_t size) {
  try {
    return body(data, size);
  } catch (const FindingReported&) {
    return 0;  // keep-going mode: the finding is on stderr; the next input runs
  }
}

}  // namespace mambadiff::fuzz
