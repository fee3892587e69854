// Loading a HuggingFace Mamba2ForCausalLM checkpoint directory (SPEC §2): config.json plus
// model.safetensors or a sharded model.safetensors.index.json. Weights stay in their stored dtype
// (fp32, bf16 or fp16); each execution path converts to its compute dtype.
#pragma once

#include <torch/torch.h>

#include <filesystem>
#include <string>
#include <vector>

#include "engine/config.h"

namespace mambadiff {

struct LayerWeights {
  torch::Tensor norm_weight;        // [D]
  torch::Tensor in_proj_weight;     // [d_inner + conv_dim + H, D]
  torch::Tensor in_proj_bias;       // [d_inner + conv_dim + H] or undefined
  torch::Tensor conv1d_weight;      // [conv_dim, K]  (HF stores [conv_dim, 1, K])
  torch::Tensor conv1d_bias;        // [conv_dim] or undefined
  torch::Tensor dt_bias;            // [H]
  torch::Tensor A_log;              // [H]
  torch::Tensor D;                  // [H]
  torch::Tensor gated_norm_weight;  // [d_inner]
  torch::Tensor out_proj_weight;    // [D, d_inner]
  torch::Tensor out_proj_bias;      // [D] or undefined
};

struct Mamba2Weights {
  torch::Tensor embeddings;     // [V, D]
  std::vector<LayerWeights> layers;
  torch::Tensor norm_f_weight;  // [D]
  torch::Tensor lm_head;        // [V, D]; the same tensor as `embeddings` when tied

  // A copy in `dtype` on `device` (undefined optional tensors stay undefined).
  Mamba2Weights to(torch::ScalarType dtype, torch::Device device) const;
};

struct Mamba2Checkpoint {
  std::filesystem::path directory;
  Mamba2Config config;
  Mamba2Weights weights;
  std::string hash;  // FNV-1a 64 over config.json and the safetensors bytes, hex

  // Throws InputError naming the file and the tensor or key at fault.
  static Mamba2Checkpoint load(const std::filesystem::path& directory);

  // The same model truncated to its first `num_layers` layers (for reducing divergence cases).
  Mamba2Checkpoint first_layers(int64_t num_layers) const;
  // Writes it as a HuggingFace Mamba2 checkpoint directory (config.json, model.safetensors) that
  // load() reads back as these weights (the inverse of the loader's naming). Each file atomic.
  void save(const std::filesystem::path& directory) const;
};

// 64-bit FNV-1a, for model hashes in metadata (identity, not security).
uint64_t fnv1a64(const void* data, size_t size, uint64_t seed = 0xcbf29ce484222325ULL);

}  // namespace mambadiff
