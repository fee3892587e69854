// Helpers several unit tests share: where the source tree and its embedded models are, whole-file
// text I/O, the message of an expected InputError, and running the mambadiff binary.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "engine/errors.h"

namespace mambadiff::test_support {

// The source tree (tests/CMakeLists.txt defines MAMBADIFF_SOURCE_DIR for the tests only: the
// product finds its corpus at run time, harness/corpus_location.h).
inline std::filesystem::path source_dir() { return std::filesystem::path(MAMBADIFF_SOURCE_DIR); }

// An embedded model: corpus/models/<name>.
// Tiny models run fastest on one thread (see cli/repro_reduce_mutants.cpp): a test file that runs
// many of them registers this with ::testing::AddGlobalTestEnvironment.
class SingleThreadedTorch : public ::testing::Environment {
 public:
  void SetUp() override { torch::set_num_threads(1); }
};

// MAMBADIFF_TEST_TMP/<area>/<name>, emptied; the folder itself is created unless `create` is false
// (then only its parent is: for commands that must create their own output folder).
inline std::filesystem::path fresh_dir(const std::string& area, const std::string& name, bool create = true) {
  const std::filesystem::path d = std::filesystem::path(MAMBADIFF_TEST_TMP) / area / name;
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(create ? d : d.parent_path());
  return d;
}

inline std::filesystem::path model_dir(const std::string& name) { return source_dir() / "corpus" / "models" / name; }

inline std::string read_text(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void write_text(const std::filesystem::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  ASSERT_TRUE(out.good()) << p;
}

// The message of the InputError `fn` throws; a test failure (and "") when it throws something else
// or nothing.
inline std::string input_error(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const InputError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected an InputError, got another exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected an InputError, nothing was thrown";
  return "";
}

// The lines of a command's captured output (stderr's "exactly one line" checks).
inline std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::stringstream ss(text);
  for (std::string l; std::getline(ss, l);) lines.push_back(l);
  return lines;
}

struct Cli {
  int exit_code = -1;
  std::string out;
};

// Runs `command` through the shell; stdout and stderr together in `out`.
inline Cli run_shell(const std::string& command) {
  Cli r;
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf{};
  while (fgets(buf.data(), buf.size(), p)) r.out += buf.data();
  const int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// Runs the mambadiff binary with `args` (through the shell, as given); stdout and stderr together in `out`.
inline Cli run_cli(const std::string& args) { return run_shell(std::string(MAMBADIFF_BINARY) + " " + args); }

}  // namespace mambadiff::test_support
