// The plain replay of the fuzz targets (no libFuzzer; the ordinary build): one program holding
// every target (fuzz/fuzz_support.h, MAMBADIFF_FUZZ_REPLAY), which runs TARGET's entry on every
// file named, and every file under every folder named (sorted, recursively). CTest runs it on
// corpus/fuzz/<target>/, so each seed corpus and every fixed finding replay in `make test`.
//   fuzz_replay TARGET FILE|DIR...    exit 0: all ran; 2: an unknown target or a path that is not
//                                     there; a finding traps (as under libFuzzer).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "fuzz/fuzz_support.h"

namespace mambadiff::fuzz {
namespace {

struct ReplayTarget {
  FuzzInitialize initialize;
  FuzzTestOneInput test_one_input;
};

std::map<std::string, ReplayTarget>& replay_targets() {
  static std::map<std::string, ReplayTarget> targets;  // filled by the targets' static initialisers
  return targets;
}

}  // namespace

bool register_replay_target(const char* name, FuzzInitialize initialize, FuzzTestOneInput test_one_input) {
  replay_targets()[name] = {initialize, test_one_input};
  return true;
}

}  // namespace mambadiff::fuzz

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  const auto& targets = mambadiff::fuzz::replay_targets();
  std::string names;
  for (const auto& [name, entries] : targets) names += (names.empty() ? "" : ", ") + name;
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s TARGET FILE|DIR...   (TARGET: %s)\n", argv[0], names.c_str());
    return 2;
  }
  const auto target = targets.find(argv[1]);
  if (target == targets.end()) {
    std::fprintf(stderr, "%s: unknown target '%s' (one of: %s)\n", argv[0], argv[1], names.c_str());
    return 2;
  }
  std::vector<fs::path> files;
  for (int i = 2; i < argc; ++i) {
    const fs::path p = argv[i];
    std::error_code ec;
    if (fs::is_regular_file(p, ec)) {
      files.push_back(p);
    } else if (fs::is_directory(p, ec)) {
      for (const auto& e : fs::recursive_directory_iterator(p))
        if (e.is_regular_file()) files.push_back(e.path());
    } else {
      std::fprintf(stderr, "%s: no such file or folder\n", p.c_str());
      return 2;
    }
  }
  std::sort(files.begin(), files.end());
  target->second.initialize(&argc, &argv);
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::fprintf(stderr, "replay %s %s (%zu bytes)\n", argv[1], f.c_str(), bytes.size());
    target->second.test_one_input(bytes.data(), bytes.size());
  }
  std::fprintf(stderr, "replayed %zu inputs on %s\n", files.size(), argv[1]);
  return 0;
}
