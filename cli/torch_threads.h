// The `--threads` option of the commands that run the embedded models (check, reduce, mutants).
#pragma once

#include <CLI/CLI.hpp>

namespace mambadiff::cli {

// The embedded models' tensors hold tens to hundreds of elements: intra-op threads cost more than
// they give. On the 2-core machine under load `mutants` took 9.0 s with one thread and 44-66 s
// with torch's default of two; `check` 2.0 s vs 7.9 s.
inline constexpr int kDefaultThreads = 1;

// Adds `--threads N` to `cmd`; the callback passes `threads` to torch::set_num_threads.
inline void add_threads_option(CLI::App* cmd, int& threads) {
  cmd->add_option("--threads", threads, "Intra-op threads of torch (1 suits small models best)")
      ->check(CLI::Range(1, 1024));  // 0 or less: a usage error (exit 2), not torch's exception
}

}  // namespace mambadiff::cli
