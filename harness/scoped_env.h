// An environment variable set for one scope: the destructor restores what it was (unset if it was
// unset). For the knobs the product reads from the environment (MAMBADIFF_SCAN_PRODUCTS,
// MAMBADIFF_MEMORY_LIMIT_BYTES, ...) where a benchmark or a test runs both settings in one process.
#pragma once

#include <cstdlib>
#include <optional>
#include <string>
#include <utility>

namespace mambadiff {

class ScopedEnv {
 public:
  ScopedEnv(std::string name, const std::string& value) : name_(std::move(name)) {
    if (const char* old = std::getenv(name_.c_str())) old_ = old;
    ::setenv(name_.c_str(), value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_.c_str(), old_->c_str(), 1);
    } else {
      ::unsetenv(name_.c_str());
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_;
  std::optional<std::string> old_;
};

}  // namespace mambadiff
