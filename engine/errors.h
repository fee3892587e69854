// Error types shared by every layer of mambadiff.
//
// InputError is "the user handed us something bad" (a file, key, tensor, op): the CLI turns it
// into exit code 2 and prints its message on one line. Messages always name the file and the key,
// tensor or op at fault, e.g. "models/tiny/model.safetensors: tensor 'lm_head.weight': ...".
#pragma once

#include <stdexcept>
#include <string>

namespace mambadiff {

class InputError : public std::runtime_error {
 public:
  explicit InputError(const std::string& what) : std::runtime_error(what) {}
};

// The first line of an error's message (LibTorch appends a stack trace after it).
inline std::string first_line(const std::exception& e) {
  const std::string what = e.what();
  return what.substr(0, what.find('\n'));
}

}  // namespace mambadiff
