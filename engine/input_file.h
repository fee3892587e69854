// Reading what a user hands us: every JSON file (config.json, model.safetensors.index.json, a
// scenario, a divergence case), every safetensors header and every weight or Δ tensor passes
// through here, so one set of limits holds for all of them:
//   * only regular files are read, checked before opening (opening a FIFO blocks until a writer
//     comes: a weights file that was a FIFO hung the tool; a device never ends);
//   * a JSON file is at most kMaxJsonBytes long and nested at most kMaxJsonDepth levels deep
//     (copying, printing and comparing a document recurse once per level: 10^5 brackets
//     overflowed the stack);
//   * every nlohmann exception (a syntax error, a number outside double range such as 1e400, a
//     value of the wrong type) becomes an InputError naming the file and the key;
//   * a value quoted in a message is cut to kMaxQuotedChars characters;
//   * a weight or Δ holding NaN or an infinity is an InputError naming the file and tensor (a NaN
//     weight makes every path compute NaN, and NaN compared with NaN must never "agree").
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "engine/errors.h"

namespace mambadiff {

// The deepest scenario is 5 levels (object > ops > op > tokens > row), a safetensors header 3;
// 64 leaves room for any honest file while each level costs a few hundred bytes of stack.
inline constexpr int kMaxJsonDepth = 64;
// 64 MiB: about 20 million token ids written as text, far beyond what a scenario can run in
// memory (the largest corpus scenario is a few kB); config and index files are kilobytes.
inline constexpr uint64_t kMaxJsonBytes = uint64_t{64} << 20;
// Long enough to recognise a value, short enough for the one-line error (SPEC §6).
inline constexpr size_t kMaxQuotedChars = 80;

// InputError unless `file` exists and is a regular file ("FILE: cannot read: not a regular file
// (a FIFO)"). Follows symlinks. Call it before opening any input.
void require_regular_file(const std::filesystem::path& file);

// The whole file, after require_regular_file; InputError naming the file when it is longer than
// `max_bytes` or cannot be read.
std::string read_input_file(const std::filesystem::path& file, uint64_t max_bytes = kMaxJsonBytes);

// Parses JSON text read from `source` (a file name, or "FILE: header"), with the limits above.
// `max_depth` below kMaxJsonDepth for formats that are shallower by definition (a safetensors header).
nlohmann::json parse_input_json(const std::string& text, const std::string& source, int max_depth = kMaxJsonDepth);

// read_input_file + parse_input_json.
nlohmann::json read_input_json(const std::filesystem::path& file);

// `value` as JSON text, cut to kMaxQuotedChars (with "..." when cut).
std::string quote_json(const nlohmann::json& value);

// `text` cut to kMaxQuotedChars (with "..." when cut).
std::string truncate_for_message(const std::string& text);

// Runs `fn` (which reads a parsed document); a nlohmann exception it throws (type_error,
// out_of_range, ...) becomes an InputError "SOURCE: <what>".
template <typename Fn>
auto with_json_errors(const std::string& source, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const nlohmann::json::exception& e) {
    throw InputError(source + ": " + truncate_for_message(e.what()));
  }
}

// InputError "FILE: tensor 'NAME': holds N NaN and M infinite values" unless every element of a
// floating tensor is finite. Integer tensors pass.
void require_finite_tensor(const torch::Tensor& tensor, const std::string& file, const std::string& name);

}  // namespace mambadiff
