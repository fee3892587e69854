#include "harness/path_registry.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/cuda.h>

#include <functional>

#include "engine/chunked_path.h"
#include "engine/errors.h"
#include "oracles/reference_path.h"

namespace mambadiff {

namespace {

struct Entry {
  const char* name;
  // Empty string when the path can run here at `dtype`, else the reason it cannot.
  std::function<std::string(torch::ScalarType)> unavailable;
  std::function<std::unique_ptr<ExecutionPath>(const Mamba2Checkpoint&, torch::ScalarType)> make;
};

std::string no_gpu(torch::ScalarType) {
  return torch::cuda::is_available() ? "" : "no CUDA device";
}
std::string always(torch::ScalarType) { return ""; }

const std::vector<Entry>& registry() {
  static const std::vector<Entry> kEntries = {
      {"reference", always,
       [](const Mamba2Checkpoint& ck, torch::ScalarType) { return std::make_unique<ReferencePath>(ck); }},
      {"plain-float32", always,
       [](const Mamba2Checkpoint& ck, torch::ScalarType) { return std::make_unique<PlainFloat32Path>(ck); }},
      {"plain-bfloat16", always,
       [](const Mamba2Checkpoint& ck, torch::ScalarType) { return std::make_unique<PlainBFloat16Path>(ck); }},
      {"chunked", always,
       [](const Mamba2Checkpoint& ck, torch::ScalarType dt) {
         return std::make_unique<ChunkedPath>(ck, dt, torch::kCPU);
       }},
      {"chunked-gpu", no_gpu,
       [](const Mamba2Checkpoint& ck, torch::ScalarType dt) {
         return std::make_unique<ChunkedPath>(ck, dt, torch::Device(torch::kCUDA, 0));
       }},
  };
  return kEntries;
}

const Entry* find(const std::string& name) {
  for (const auto& e : registry())
    if (name == e.name) return &e;
  return nullptr;
}

}  // namespace

bool is_file_path(const std::string& name) { return name.rfind("file:", 0) == 0; }

std::vector<std::string> registered_paths() {
  std::vector<std::string> names;
  for (const auto& e : registry()) names.push_back(e.name);
  return names;
}

bool path_available(const std::string& name, torch::ScalarType dtype, std::string* why) {
  const Entry* e = find(name);
  if (!e) throw InputError(fmt::format("unknown path '{}' (known: {}, file:PATH)", name, fmt::join(registered_paths(), ", ")));
  const std::string reason = e->unavailable(dtype);
  if (why) *why = reason;
  return reason.empty();
}

std::unique_ptr<ExecutionPath> make_path(const std::string& name, const Mamba2Checkpoint& ck, torch::ScalarType dtype) {
  std::string why;
  if (!path_available(name, dtype, &why)) throw PathUnavailable(fmt::format("{}: {}", name, why));
  return find(name)->make(ck, dtype);
}

ScenarioResult evaluate_path(const std::string& name, const Scenario& scenario, const Mamba2Checkpoint& ck) {
  if (is_file_path(name)) return read_result_file(name.substr(5), scenario, ck.config.vocab_size);
  auto path = make_path(name, ck, scenario.dtype);
  return run_scenario(scenario, *path);
}

}  // namespace mambadiff
