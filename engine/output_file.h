// Writing outputs: every file mambadiff writes (result tensors, Δ files, scenarios, divergence
// cases, JSON and JUnit reports) goes through write_output_file.
//   * A regular file, or a path that does not exist yet, is written to FILE.tmp.<pid> beside it,
//     flushed to disk and renamed over FILE: a reader never sees half a file, and a failure leaves
//     neither the file nor the temporary behind.
//   * A path that exists and is not a regular file (a character device such as /dev/null or
//     /dev/full, a FIFO, /dev/stdout) is written straight through: renaming over it would replace
//     the device node with a regular file (run as root, `--json /dev/null` did).
//   * A directory, or any failure to write, is an InputError naming the file.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace mambadiff {

// Writes the concatenation of `pieces` as `file` (see above).
void write_output_file(const std::filesystem::path& file, const std::vector<std::string_view>& pieces);

// write_output_file with one piece of text.
void write_text_atomically(const std::filesystem::path& file, const std::string& text);

// Appends `lines` (whole lines, each ending in '\n') to `file` (created 0644 if absent) with ONE
// write(2) on an O_APPEND descriptor, so an interrupted run adds all of them or none, and two runs
// appending at once do not interleave within a line. The file is never rewritten. An existing file
// that does not end in '\n' (someone else's interrupted write) is refused rather than glued onto;
// a short write (a full disk) is an InputError naming the file. The only appending writer
// (`check --history`, harness/history.h).
void append_lines(const std::filesystem::path& file, const std::string& lines);

}  // namespace mambadiff
