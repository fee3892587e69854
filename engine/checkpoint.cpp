#include "engine/checkpoint.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "engine/errors.h"
#include "engine/input_file.h"
#include "engine/output_file.h"
#include "engine/safetensors.h"

namespace mambadiff {

uint64_t fnv1a64(const void* data, size_t size, uint64_t seed) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint64_t h = seed;
  for (size_t i = 0; i < size; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

namespace {

std::string read_file(const std::filesystem::path& path) { return read_input_file(path); }

// A shard named by the index must be a file inside the model folder: a relative name without
// "..", whose real path (symlinks resolved) stays under the folder's real path.
void require_inside(const std::filesystem::path& dir, const std::filesystem::path& index, const std::string& tensor,
                    const std::string& file) {
  const std::filesystem::path rel(file);
  bool escapes = file.empty() || rel.is_absolute() || rel.has_root_name() || rel.has_root_directory();
  for (const auto& part : rel) escapes = escapes || part == "..";
  if (!escapes) {
    std::error_code ec1, ec2;
    const auto root = std::filesystem::weakly_canonical(dir, ec1);
    const auto real = std::filesystem::weakly_canonical(dir / rel, ec2);
    if (ec1 || ec2) {
      escapes = true;
    } else {
      const auto [root_end, real_it] = std::mismatch(root.begin(), root.end(), real.begin(), real.end());
      escapes = root_end != root.end();
      (void)real_it;
    }
  }
  if (escapes) {
    throw InputError(fmt::format("{}: key 'weight_map.{}': shard file '{}' is outside the model folder (a relative "
                                 "name without '..' that stays inside the folder, symlinks resolved, is required)",
                                 index.string(), tensor, file));
  }
}

// Finds each tensor name in one of the checkpoint's safetensors files.
class TensorSource {
 public:
  TensorSource(const std::filesystem::path& dir, int64_t num_layers) : num_layers_(num_layers) {
    const auto single = dir / "model.safetensors";
    const auto index = dir / "model.safetensors.index.json";
    if (std::filesystem::exists(index)) {
      const std::string text = read_file(index);
      const nlohmann::json j = parse_input_json(text, index.string());
      if (!j.contains("weight_map") || !j["weight_map"].is_object()) {
        throw InputError(fmt::format("{}: missing key 'weight_map'", index.string()));
      }
      std::map<std::string, size_t> file_index;
      for (const auto& [name, file] : j["weight_map"].items()) {
        if (!file.is_string()) {
          throw InputError(fmt::format("{}: key 'weight_map.{}': expected a file name", index.string(), name));
        }
        const std::string f = file.get<std::string>();
        require_inside(dir, index, name, f);
        if (!file_index.count(f)) {
          file_index[f] = files_.size();
          files_.push_back(safetensors::File::open(dir / f));
        }
        where_[name] = file_index[f];
      }
      expected_file_ = index;
    } else if (std::filesystem::exists(single)) {
      files_.push_back(safetensors::File::open(single));
      for (const auto& name : files_[0].names()) where_[name] = 0;
      expected_file_ = single;
    } else {
      throw InputError(fmt::format("{}: neither model.safetensors nor model.safetensors.index.json",
                                   dir.string()));
    }
  }

  bool contains(const std::string& name) const { return where_.count(name) > 0; }

  // InputError naming the file and the first stored tensor not in `known`: a tensor the model
  // does not use means the weights and the config disagree (more layers than num_hidden_layers,
  // another architecture's names), which a verification run must not paper over.
  void reject_unknown(const std::set<std::string>& known) const {
    for (const auto& f : files_) {
      for (const auto& name : f.names()) {
        if (!known.count(name)) {
          throw InputError(fmt::format("{}: tensor '{}': not a tensor of a Mamba2ForCausalLM with this config "
                                       "({} layers): unknown tensors are rejected",
                                       f.path().string(), name, num_layers_));
        }
      }
    }
    for (const auto& [name, file] : where_) {
      if (!known.count(name)) {
        throw InputError(fmt::format("{}: key 'weight_map.{}': not a tensor of a Mamba2ForCausalLM with this config "
                                     "({} layers): unknown tensors are rejected",
                                     expected_file_.string(), name, num_layers_));
      }
    }
  }

  // The tensor, checked against `shape`; floating dtypes only.
  torch::Tensor get(const std::string& name, const std::vector<int64_t>& shape) const {
    auto it = where_.find(name);
    if (it == where_.end()) {
      throw InputError(fmt::format("{}: missing tensor '{}'", expected_file_.string(), name));
    }
    const auto& file = files_[it->second];
    if (!file.contains(name)) {
      throw InputError(fmt::format("{}: missing tensor '{}' (listed in the index)", file.path().string(), name));
    }
    torch::Tensor t = file.tensor(name);
    require_finite_tensor(t, file.path().string(), name);
    if (!t.is_floating_point()) {
      throw InputError(fmt::format("{}: tensor '{}': dtype {} is not a floating type", file.path().string(),
                                   name, safetensors::dtype_name(t.scalar_type())));
    }
    if (t.sizes().vec() != shape) {
      throw InputError(fmt::format("{}: tensor '{}': shape {} expected {}", file.path().string(), name,
                                   fmt::join(t.sizes().vec(), "x"), fmt::join(shape, "x")));
    }
    return t;
  }

  // A bias the config declares (use_bias / use_conv_bias) must be there; one it does not declare
  // is ignored even when stored, as HF builds those layers without a bias and drops it.
  torch::Tensor get_optional(const std::string& name, const std::vector<int64_t>& shape, bool declared) const {
    return declared ? get(name, shape) : torch::Tensor();
  }

  uint64_t hash(uint64_t h) const {
    for (const auto& f : files_) {
      for (const auto& name : f.names()) {
        h = fnv1a64(name.data(), name.size(), h);
        torch::Tensor t = f.tensor(name).contiguous();
        h = fnv1a64(t.data_ptr(), t.nbytes(), h);
      }
    }
    return h;
  }

 private:
  std::vector<safetensors::File> files_;
  std::map<std::string, size_t> where_;
  std::filesystem::path expected_file_;
  int64_t num_layers_;  // for messages
};

torch::Tensor convert(const torch::Tensor& t, torch::ScalarType dtype, torch::Device device) {
  return t.defined() ? t.to(device, dtype).contiguous() : t;
}

}  // namespace

Mamba2Weights Mamba2Weights::to(torch::ScalarType dtype, torch::Device device) const {
  Mamba2Weights w;
  w.embeddings = convert(embeddings, dtype, device);
  w.norm_f_weight = convert(norm_f_weight, dtype, device);
  w.lm_head = lm_head.is_same(embeddings) ? w.embeddings : convert(lm_head, dtype, device);
  for (const auto& l : layers) {
    LayerWeights c;
    c.norm_weight = convert(l.norm_weight, dtype, device);
    c.in_proj_weight = convert(l.in_proj_weight, dtype, device);
    c.in_proj_bias = convert(l.in_proj_bias, dtype, device);
    c.conv1d_weight = convert(l.conv1d_weight, dtype, device);
    c.conv1d_bias = convert(l.conv1d_bias, dtype, device);
    // dt_bias, A_log and D enter the fp32 scan math in every implementation (mamba_ssm keeps them
    // fp32); only float64 (the reference) raises them further.
    const auto scan_dtype = dtype == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
    c.dt_bias = convert(l.dt_bias, scan_dtype, device);
    c.A_log = convert(l.A_log, scan_dtype, device);
    c.D = convert(l.D, scan_dtype, device);
    c.gated_norm_weight = convert(l.gated_norm_weight, dtype, device);
    c.out_proj_weight = convert(l.out_proj_weight, dtype, device);
    c.out_proj_bias = convert(l.out_proj_bias, dtype, device);
    w.layers.push_back(std::move(c));
  }
  return w;
}

Mamba2Checkpoint Mamba2Checkpoint::load(const std::filesystem::path& directory) {
  if (!std::filesystem::is_directory(directory)) {
    throw InputError(fmt::format("{}: not a model directory", directory.string()));
  }
  Mamba2Checkpoint ck;
  ck.directory = directory;
  const auto config_path = directory / "config.json";
  const std::string config_text = read_file(config_path);
  ck.config = Mamba2Config::from_json(parse_json_allowing_nonfinite(config_text, config_path.string()),
                                      config_path.string());
  const Mamba2Config& c = ck.config;
  const TensorSource src(directory, ck.config.num_hidden_layers);

  const int64_t D = c.hidden_size, V = c.vocab_size, H = c.num_heads, I = c.d_inner();
  Mamba2Weights& w = ck.weights;
  // Every name the model knows, also those it may drop (a tied lm_head, undeclared biases); any
  // other stored tensor is rejected below.
  std::set<std::string> known = {"backbone.embeddings.weight", "backbone.norm_f.weight", "lm_head.weight"};
  w.embeddings = src.get("backbone.embeddings.weight", {V, D});
  w.norm_f_weight = src.get("backbone.norm_f.weight", {D});
  if (c.tie_word_embeddings) {
    // HF ties lm_head to the embeddings and drops a stored copy; a copy of the wrong shape means
    // the file does not match the config, and is rejected.
    if (src.contains("lm_head.weight")) src.get("lm_head.weight", {V, D});
    w.lm_head = w.embeddings;
  } else {
    w.lm_head = src.get("lm_head.weight", {V, D});
  }
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = fmt::format("backbone.layers.{}.", i);
    for (const char* n : {"norm.weight", "mixer.in_proj.weight", "mixer.in_proj.bias", "mixer.conv1d.weight",
                          "mixer.conv1d.bias", "mixer.dt_bias", "mixer.A_log", "mixer.D", "mixer.norm.weight",
                          "mixer.out_proj.weight", "mixer.out_proj.bias"}) {
      known.insert(p + n);
    }
    LayerWeights l;
    l.norm_weight = src.get(p + "norm.weight", {D});
    l.in_proj_weight = src.get(p + "mixer.in_proj.weight", {c.in_proj_dim(), D});
    l.in_proj_bias = src.get_optional(p + "mixer.in_proj.bias", {c.in_proj_dim()}, c.use_bias);
    l.conv1d_weight = src.get(p + "mixer.conv1d.weight", {c.conv_dim(), 1, c.conv_kernel}).reshape({c.conv_dim(), c.conv_kernel});
    l.conv1d_bias = src.get_optional(p + "mixer.conv1d.bias", {c.conv_dim()}, c.use_conv_bias);
    l.dt_bias = src.get(p + "mixer.dt_bias", {H});
    l.A_log = src.get(p + "mixer.A_log", {H});
    l.D = src.get(p + "mixer.D", {H});
    l.gated_norm_weight = src.get(p + "mixer.norm.weight", {I});
    l.out_proj_weight = src.get(p + "mixer.out_proj.weight", {D, I});
    l.out_proj_bias = src.get_optional(p + "mixer.out_proj.bias", {D}, c.use_bias);
    w.layers.push_back(std::move(l));
  }
  src.reject_unknown(known);
  ck.hash = fmt::format("{:016x}", src.hash(fnv1a64(config_text.data(), config_text.size())));
  return ck;
}

Mamba2Checkpoint Mamba2Checkpoint::first_layers(int64_t num_layers) const {
  Mamba2Checkpoint ck = *this;
  num_layers = std::max<int64_t>(1, std::min<int64_t>(num_layers, config.num_hidden_layers));
  ck.config.num_hidden_layers = num_layers;
  ck.weights.layers.resize(static_cast<size_t>(num_layers));
  ck.hash = fmt::format("{}-first{}", hash, num_layers);
  return ck;
}

void Mamba2Checkpoint::save(const std::filesystem::path& dir) const {
  std::filesystem::create_directories(dir);
  write_text_atomically(dir / "config.json", config.to_json().dump(1) + "\n");
  const Mamba2Config& c = config;
  const auto& w = weights;
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  tensors.emplace_back("backbone.embeddings.weight", w.embeddings);
  tensors.emplace_back("backbone.norm_f.weight", w.norm_f_weight);
  if (!c.tie_word_embeddings) tensors.emplace_back("lm_head.weight", w.lm_head);
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const LayerWeights& l = w.layers[i];
    const std::string p = fmt::format("backbone.layers.{}.", i);
    auto put = [&](const std::string& name, const torch::Tensor& t) {
      if (t.defined()) tensors.emplace_back(p + name, t);
    };
    put("norm.weight", l.norm_weight);
    put("mixer.in_proj.weight", l.in_proj_weight);
    put("mixer.in_proj.bias", l.in_proj_bias);
    put("mixer.conv1d.weight", l.conv1d_weight.reshape({c.conv_dim(), 1, c.conv_kernel}));  // HF's [C, 1, K]
    put("mixer.conv1d.bias", l.conv1d_bias);
    put("mixer.dt_bias", l.dt_bias);
    put("mixer.A_log", l.A_log);
    put("mixer.D", l.D);
    put("mixer.norm.weight", l.gated_norm_weight);
    put("mixer.out_proj.weight", l.out_proj_weight);
    put("mixer.out_proj.bias", l.out_proj_bias);
  }
  safetensors::write(dir / "model.safetensors", tensors);
}

}  // namespace mambadiff
