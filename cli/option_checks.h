// The domain of every numeric option, checked by one validator: a value outside it is a usage
// error (exit 2) whose one line names the option, e.g. "--lr: inf is not a finite number > 0".
// CLI11's own Range/NonNegativeNumber let NaN through (every comparison with NaN is false), and an
// unsigned option would wrap "-1" to 2^64 - 1, so the value is read here as the text it was given.
// Also the check every output option makes before any work: its folder exists and can be written.
#pragma once

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>

#include "engine/errors.h"

namespace mambadiff::cli {

// The most tokens `generate --tokens` produces: one decode step each, about 1.5 ms on the CPU
// machine with the embedded byte model (so ~100 s at the limit); Ctrl-C stops it earlier and prints
// what was generated.
inline constexpr int64_t kMaxGenerateTokens = 65536;

// Accepts a finite number in [min, max]; with `min_exclusive`, in (min, max].
inline CLI::Validator number_in(double min, double max = std::numeric_limits<double>::max(),
                                bool min_exclusive = false) {
  const std::string domain = max == std::numeric_limits<double>::max()
                                 ? fmt::format("a finite number {} {}", min_exclusive ? ">" : ">=", min)
                                 : fmt::format("a number in [{}, {}]", min, max);
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        errno = 0;
        char* end = nullptr;
        const double v = std::strtod(text.c_str(), &end);
        const bool parsed = !text.empty() && end == text.c_str() + text.size() && errno != ERANGE;
        if (!parsed || !std::isfinite(v) || v < min || (min_exclusive && v == min) || v > max) {
          return fmt::format("{} is not {}", text.size() > 40 ? text.substr(0, 40) + "..." : text, domain);
        }
        return "";
      },
      domain, "NUMBER_IN");
}

// A usage error before any work when the folder an output goes to does not exist or cannot be
// written (a suite or a benchmark would otherwise run for minutes and then fail to write).
inline void require_output_folder(const std::string& file, const char* option) {
  const std::filesystem::path parent = std::filesystem::path(file).parent_path();
  std::error_code ec;
  if (std::filesystem::is_directory(file, ec)) {
    throw InputError(fmt::format("{} {}: cannot write: it is a folder", option, file));
  }
  if (!parent.empty() && !std::filesystem::is_directory(parent, ec)) {
    throw InputError(fmt::format("{} {}: cannot write: the folder {} does not exist", option, file, parent.string()));
  }
  const std::string folder = parent.empty() ? "." : parent.string();
  if (::access(folder.c_str(), W_OK) != 0) {
    throw InputError(fmt::format("{} {}: cannot write: the folder {} is not writable ({})", option, file, folder,
                                 std::strerror(errno)));
  }
}

}  // namespace mambadiff::cli
