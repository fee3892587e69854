#include "harness/path_registry.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/cuda.h>

#include <algorithm>
#include <functional>
#include <stdexcept>

#include "engine/chunked_path.h"
#include "engine/errors.h"
#include "oracles/reference_path.h"
#if MAMBADIFF_CUDA_PATH
#include "cuda_path/cuda_path.h"
#endif

namespace mambadiff {

namespace {

struct Entry {
  const char* name;
  PathRole role;
  // kBaseline: the dtype its loops compute in (the runs it bounds); kUndefined for other roles.
  torch::ScalarType baseline_dtype;
  // Empty string when the path can run here at `dtype`, else the reason it cannot.
  std::function<std::string(torch::ScalarType)> unavailable;
  std::function<std::unique_ptr<ExecutionPath>(const Mamba2Checkpoint&, torch::ScalarType)> make;
};

std::string no_gpu(torch::ScalarType) {
  return torch::cuda::is_available() ? "" : "no CUDA device";
}
std::string always(torch::ScalarType) { return ""; }

std::string no_cuda_path(torch::ScalarType dtype) {
#if MAMBADIFF_CUDA_PATH
  if (dtype != torch::kFloat32 && dtype != torch::kBFloat16) return "float32 and bfloat16 only";
  return no_gpu(dtype);
#else
  return "built without the CUDA kernels (no nvcc or no CUDA LibTorch at configure time)";
#endif
}

std::unique_ptr<ExecutionPath> make_cuda_path(const Mamba2Checkpoint& ck, torch::ScalarType dtype) {
#if MAMBADIFF_CUDA_PATH
  return std::make_unique<CudaPath>(ck, dtype, torch::Device(torch::kCUDA, 0));
#else
  throw PathUnavailable("cuda: " + no_cuda_path(dtype));
#endif
}

const std::vector<Entry>& registry() {
  static const std::vector<Entry> kEntries = {
      {"reference", PathRole::kOracle, torch::ScalarType::Undefined, always,
       [](const Mamba2Checkpoint& ck, torch::ScalarType) { return std::make_unique<ReferencePath>(ck); }},
      {"plain-float32", PathRole::kBaseline, torch::kFloat32, always,
       [](const Mamba2Checkpoint& ck, torch::ScalarType) { return std::make_unique<PlainFloat32Path>(ck); }},
      {"plain-bfloat16", PathRole::kBaseline, torch::kBFloat16, always,
       [](const Mamba2Checkpoint& ck, torch::ScalarType) { return std::make_unique<PlainBFloat16Path>(ck); }},
      {"plain-float16", PathRole::kBaseline, torch::kFloat16, always,
       [](const Mamba2Checkpoint& ck, torch::ScalarType) { return std::make_unique<PlainFloat16Path>(ck); }},
      {"chunked", PathRole::kDifferentiable, torch::ScalarType::Undefined, always,
       [](const Mamba2Checkpoint& ck, torch::ScalarType dt) {
         return std::make_unique<ChunkedPath>(ck, dt, torch::kCPU);
       }},
      {"chunked-gpu", PathRole::kDifferentiable, torch::ScalarType::Undefined, no_gpu,
       [](const Mamba2Checkpoint& ck, torch::ScalarType dt) {
         return std::make_unique<ChunkedPath>(ck, dt, torch::Device(torch::kCUDA, 0));
       }},
      {"cuda", PathRole::kDifferentiable, torch::ScalarType::Undefined, no_cuda_path, make_cuda_path},
  };
  return kEntries;
}

const Entry* find(const std::string& name) {
  for (const auto& e : registry())
    if (name == e.name) return &e;
  return nullptr;
}

std::vector<PathProvider>& providers() {
  static std::vector<PathProvider> kProviders;
  return kProviders;
}

const PathProvider* provider_for(const std::string& name) {
  for (const auto& p : providers())
    if (name.rfind(p.prefix, 0) == 0) return &p;
  return nullptr;
}

// InputError unless the provider answers `name`.
void require_provided(const PathProvider& p, const std::string& name) {
  const auto names = p.names();
  if (std::find(names.begin(), names.end(), name) == names.end()) {
    throw InputError(fmt::format("unknown path '{}' (known {}* paths: {})", name, p.prefix, fmt::join(names, ", ")));
  }
}

}  // namespace

void install_path_provider(PathProvider provider) {
  auto& all = providers();
  all.erase(std::remove_if(all.begin(), all.end(), [&](const PathProvider& p) { return p.prefix == provider.prefix; }),
            all.end());
  all.push_back(std::move(provider));
}

constexpr const char* kFilePrefix = "file:";

bool is_file_path(const std::string& name) { return name.rfind(kFilePrefix, 0) == 0; }

std::filesystem::path file_path_target(const std::string& name) {
  return name.substr(std::char_traits<char>::length(kFilePrefix));
}

std::string file_path_name(const std::filesystem::path& file) { return kFilePrefix + file.string(); }

const char* role_name(PathRole role) {
  switch (role) {
    case PathRole::kOracle: return "oracle";
    case PathRole::kBaseline: return "low-precision baseline";
    case PathRole::kDifferentiable: return "differentiable";
    case PathRole::kExternalFile: return "external file";
    case PathRole::kProvided: return "provided";
  }
  return "?";
}

PathRole path_role(const std::string& name) {
  if (is_file_path(name)) return PathRole::kExternalFile;
  if (const PathProvider* p = provider_for(name)) {
    require_provided(*p, name);
    return PathRole::kProvided;
  }
  const Entry* e = find(name);
  if (!e) throw InputError(fmt::format("unknown path '{}' (known: {}, file:PATH)", name, fmt::join(registered_paths(), ", ")));
  return e->role;
}

bool is_oracle(const std::string& name) {
  const Entry* e = find(name);
  return e && e->role == PathRole::kOracle;
}

std::string oracle_path() {
  const auto oracles = registered_paths(PathRole::kOracle);
  if (oracles.size() != 1) throw std::logic_error("the path registry must hold exactly one oracle");
  return oracles.front();
}

std::string baseline_path(torch::ScalarType run_dtype) {
  for (const auto& e : registry())
    if (e.role == PathRole::kBaseline && e.baseline_dtype == run_dtype) return e.name;
  for (const auto& e : registry())
    if (e.role == PathRole::kBaseline && e.baseline_dtype == torch::kFloat32) return e.name;
  throw std::logic_error("the path registry holds no float32 baseline");
}

std::vector<std::string> registered_paths() {
  std::vector<std::string> names;
  for (const auto& e : registry()) names.push_back(e.name);
  return names;
}

std::vector<std::string> registered_paths(PathRole role) {
  std::vector<std::string> names;
  for (const auto& e : registry())
    if (e.role == role) names.push_back(e.name);
  return names;
}

bool path_available(const std::string& name, torch::ScalarType dtype, std::string* why) {
  if (const PathProvider* p = provider_for(name)) {
    require_provided(*p, name);
    if (why) why->clear();
    return true;
  }
  const Entry* e = find(name);
  if (!e) throw InputError(fmt::format("unknown path '{}' (known: {}, file:PATH)", name, fmt::join(registered_paths(), ", ")));
  const std::string reason = e->unavailable(dtype);
  if (why) *why = reason;
  return reason.empty();
}

std::unique_ptr<ExecutionPath> make_path(const std::string& name, const Mamba2Checkpoint& ck, torch::ScalarType dtype) {
  // A provider's path ("mutant:x") or an external result file ("file:PATH") has no ExecutionPath
  // to build: evaluate_path() runs it. Checked first, as path_available() accepts both.
  if (provider_for(name) != nullptr || is_file_path(name)) {
    throw InputError(fmt::format(
        "path '{}' has no execution path to build (it is evaluated whole: by its provider or read "
        "from its file); use one of: {}",
        name, fmt::join(registered_paths(), ", ")));
  }
  std::string why;
  if (!path_available(name, dtype, &why)) throw PathUnavailable(fmt::format("{}: {}", name, why));
  return find(name)->make(ck, dtype);
}

ScenarioResult evaluate_path(const std::string& name, const Scenario& scenario, const Mamba2Checkpoint& ck) {
  if (is_file_path(name)) return read_result_file(file_path_target(name), scenario, ck.config.vocab_size);
  if (const PathProvider* p = provider_for(name)) {
    require_provided(*p, name);
    return p->evaluate(name, scenario, ck);
  }
  require_memory_for_scenario(scenario, ck.config, scenario.dtype);  // before the path copies the weights
  auto path = make_path(name, ck, scenario.dtype);
  return run_scenario(scenario, *path);
}

}  // namespace mambadiff
