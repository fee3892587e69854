#include "harness/corpus_location.h"

#include <fmt/format.h>

#include <cstdlib>
#include <system_error>

#include "engine/errors.h"

namespace mambadiff {

namespace fs = std::filesystem;

namespace {

// The first of `start` and its ancestors holding corpus/models, as <that>/corpus; empty if none.
fs::path corpus_above(const fs::path& start) {
  std::error_code ec;
  for (fs::path dir = start; !dir.empty(); dir = dir.parent_path()) {
    if (fs::is_directory(dir / "corpus" / "models", ec)) return dir / "corpus";
    if (dir == dir.parent_path()) break;  // the root
  }
  return {};
}

}  // namespace

fs::path executable_dir() {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::path() : exe.parent_path();
}

fs::path corpus_dir() {
  if (const char* env = std::getenv("MAMBADIFF_CORPUS"); env && *env) {
    std::error_code ec;
    if (!fs::is_directory(env, ec)) {
      throw InputError(fmt::format("MAMBADIFF_CORPUS={}: not a folder", env));
    }
    return env;
  }
  if (fs::path found = corpus_above(executable_dir()); !found.empty()) return found;
  std::error_code ec;
  if (fs::path found = corpus_above(fs::current_path(ec)); !found.empty()) return found;
  throw InputError(fmt::format(
      "no corpus found above the binary ({}) or the current folder: set MAMBADIFF_CORPUS to a corpus folder "
      "(one holding models/), or give the model explicitly",
      executable_dir().string()));
}

}  // namespace mambadiff
