// The scenario format (SPEC §5): the interchange and reproduction unit. JSON, with paths inside
// relative to the scenario file:
//   {"format": "mambadiff.scenario.v1", "model": "models/tiny", "dtype": "float32",
//    "ops": [{"op": "forward", "tokens": [[3, 1], [5, 9]]},
//            {"op": "inject", "layer": 1, "delta": {"file": "d.safetensors", "tensor": "delta.1"}},
//            {"op": "snapshot", "name": "s0"}, {"op": "restore", "name": "s0"}, {"op": "reset"}]}
#pragma once

#include <torch/torch.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace mambadiff {

inline constexpr const char* kScenarioFormat = "mambadiff.scenario.v1";

enum class OpKind { kForward, kInject, kSnapshot, kRestore, kReset };
const char* op_kind_name(OpKind k);

struct ScenarioOp {
  OpKind kind = OpKind::kForward;
  torch::Tensor tokens;  // forward: [B, T] int64
  int64_t layer = 0;     // inject
  torch::Tensor delta;   // inject: [B, H, P, N] or [H, P, N], float
  std::string delta_file, delta_tensor;  // inject: where the delta came from (kept for writing back)
  std::string name;      // snapshot / restore
};

struct Scenario {
  std::filesystem::path file;       // where it was read from (or will be written)
  std::filesystem::path model_dir;  // resolved against the scenario's folder
  std::string model;                // as written in the file
  torch::ScalarType dtype = torch::kFloat32;
  std::vector<ScenarioOp> ops;

  int64_t batch_size() const;  // of the forward ops (validated equal); 1 when there is none
  int64_t num_forward_ops() const;

  // Reads and validates structure: InputError names the file and the op index and key at fault
  // (batch sizes that disagree between ops, a restore of a snapshot never taken, ...).
  static Scenario load(const std::filesystem::path& file);
  static Scenario from_json(const nlohmann::json& j, const std::filesystem::path& file);
  // Writes the scenario as `file`; deltas go into one safetensors file beside it
  // (<stem>.deltas.safetensors) unless they came from a file. Atomic.
  void save(const std::filesystem::path& file) const;
};

// "float32" | "bfloat16" | "float16" | "float64"  <->  torch dtype. InputError on others.
torch::ScalarType parse_dtype(const std::string& name, const std::string& context);
std::string dtype_string(torch::ScalarType dtype);

}  // namespace mambadiff
