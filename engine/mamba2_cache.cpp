#include "engine/mamba2_cache.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdio>

#include "engine/errors.h"

namespace mambadiff {

const char* branch_name(Branch b) {
  switch (b) {
    case Branch::kPrefill: return "prefill";
    case Branch::kStep: return "step";
    case Branch::kContinue: return "continue";
  }
  return "?";
}

const char* logical_kernels(Branch b) {
  return b == Branch::kStep ? "causal_conv1d_update+selective_state_update+gated_rms_norm" : "causal_conv1d+ssd_chunk_scan+gated_rms_norm";
}

Mamba2Cache::Mamba2Cache(const Mamba2Config& c, int64_t batch_size, torch::ScalarType conv_dtype,
                         torch::ScalarType state_dtype, torch::Device device)
    : batch_size_(batch_size), conv_dtype_(conv_dtype), state_dtype_(state_dtype), device_(device) {
  const auto conv_opts = torch::TensorOptions().dtype(conv_dtype).device(device);
  const auto state_opts = torch::TensorOptions().dtype(state_dtype).device(device);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    conv_states.push_back(torch::zeros({batch_size, c.conv_dim(), c.conv_kernel}, conv_opts));
    ssm_states.push_back(torch::zeros({batch_size, c.num_heads, c.head_dim, c.state_size}, state_opts));
  }
}

Branch Mamba2Cache::dispatch(int64_t num_tokens) const {
  if (seqlen_offset == 0) return Branch::kPrefill;
  return num_tokens == 1 ? Branch::kStep : Branch::kContinue;
}

void Mamba2Cache::inject(int64_t layer, const torch::Tensor& delta) {
  if (layer < 0 || layer >= num_layers()) {
    throw InputError(fmt::format("inject: layer {} out of range [0, {})", layer, num_layers()));
  }
  torch::Tensor& state = ssm_states[static_cast<size_t>(layer)];
  const auto want = state.sizes().vec();  // [B, H, P, N]
  const auto got = delta.sizes().vec();
  const bool full = got == want;
  const bool broadcast = got.size() == 3 && std::equal(got.begin(), got.end(), want.begin() + 1);
  if (!full && !broadcast) {
    throw InputError(fmt::format("inject: layer {}: delta shape [{}] is neither [{}] nor [{}]", layer,
                                 fmt::join(got, ", "), fmt::join(want, ", "),
                                 fmt::join(want.begin() + 1, want.end(), ", ")));
  }
  state.add_(delta.to(state.device(), state.scalar_type()));
}

void check_bytes_copyable(const torch::Tensor& dst, const torch::Tensor& src, const std::string& name) {
  auto describe = [](const torch::Tensor& t) {
    if (!t.defined()) return std::string("undefined");
    return fmt::format("[{}] {} on {}{}", fmt::join(t.sizes(), ", "), c10::toString(t.scalar_type()),
                       t.device().str(), t.is_contiguous() ? "" : " (not contiguous)");
  };
  if (!dst.defined() || !src.defined() || dst.scalar_type() != src.scalar_type() || dst.sizes() != src.sizes() ||
      dst.device() != src.device() || !dst.is_contiguous() || !src.is_contiguous()) {
    throw InputError(fmt::format("copy_bytes: tensor '{}': destination {} and source {} differ (both must be "
                                 "defined, contiguous, of one dtype, shape and device)",
                                 name, describe(dst), describe(src)));
  }
}

void copy_bytes(const std::vector<torch::Tensor>& dst, const std::vector<torch::Tensor>& src,
                const std::vector<std::string>& names) {
  if (dst.size() != src.size() || (!names.empty() && names.size() != dst.size())) {
    throw InputError(fmt::format("copy_bytes: {} destinations for {} sources ({} names)", dst.size(), src.size(),
                                 names.size()));
  }
  auto name_of = [&](size_t i) { return names.empty() ? fmt::format("#{}", i) : names[i]; };
  // Every pair is checked before any byte moves: a mismatch leaves every destination unchanged.
  for (size_t i = 0; i < dst.size(); ++i) check_bytes_copyable(dst[i], src[i], name_of(i));
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> to, from;  // byte views of the same storage
  for (size_t i = 0; i < dst.size(); ++i) {
    if (dst[i].numel() == 0) continue;
    // detach(): a byte view of the same storage, also while dst carries autograd history.
    to.push_back(dst[i].detach().view({-1}).view(torch::kUInt8));
    from.push_back(src[i].detach().view({-1}).view(torch::kUInt8));
  }
  // One multi-tensor copy: a launch or two on a GPU instead of one per tensor (the optimizer
  // restores the whole cache every iteration).
  if (!to.empty()) torch::_foreach_copy_(to, from);
}

void copy_bytes(torch::Tensor& dst, const torch::Tensor& src, const std::string& name) {
  copy_bytes(std::vector{dst}, std::vector{src}, std::vector{name});
}

Mamba2Cache::Snapshot Mamba2Cache::snapshot() const {
  Snapshot s;
  s.seqlen_offset = seqlen_offset;
  for (const auto& t : conv_states) s.conv_states.push_back(t.detach().clone());
  for (const auto& t : ssm_states) s.ssm_states.push_back(t.detach().clone());
  return s;
}

void Mamba2Cache::restore(const Snapshot& s) {
  if (s.conv_states.size() != conv_states.size() || s.ssm_states.size() != ssm_states.size()) {
    throw InputError(fmt::format("restore: the snapshot holds {} conv and {} ssm states, the cache {} and {}",
                                 s.conv_states.size(), s.ssm_states.size(), conv_states.size(), ssm_states.size()));
  }
  std::vector<torch::Tensor> dst, src;
  std::vector<std::string> names;
  for (size_t l = 0; l < conv_states.size(); ++l) {
    dst.insert(dst.end(), {conv_states[l], ssm_states[l]});
    src.insert(src.end(), {s.conv_states[l], s.ssm_states[l]});
    names.insert(names.end(), {fmt::format("conv_states[{}]", l), fmt::format("ssm_states[{}]", l)});
  }
  // Validate everything, then change anything: a mismatched snapshot leaves the cache as it was.
  for (size_t i = 0; i < dst.size(); ++i) check_bytes_copyable(dst[i], src[i], names[i]);
  for (size_t l = 0; l < conv_states.size(); ++l) {
    // An optimizer may have written autograd-tracked values into the states: drop that history
    // in place (same storage), so the restored cache is a plain cache again.
    conv_states[l].detach_();
    ssm_states[l].detach_();
  }
  copy_bytes(dst, src, names);
  seqlen_offset = s.seqlen_offset;
}

void ScopedCacheRestore::restore_now() {
  restored_ = true;  // also when restore() throws: the destructor must not try a second time
  cache_.restore(snap_);
}

ScopedCacheRestore::~ScopedCacheRestore() noexcept {
  if (restored_) return;
  try {
    cache_.restore(snap_);
  } catch (const std::exception& e) {
    failure_ = first_line(e);
  } catch (...) {
    failure_ = "unknown exception";
  }
  if (!failure_.empty()) {
    std::fprintf(stderr, "mambadiff: warning: the cache could not be restored while leaving a scope: %s\n",
                 failure_.c_str());
  }
}

void Mamba2Cache::reset() {
  torch::NoGradGuard no_grad;
  for (auto& t : conv_states) t.zero_();
  for (auto& t : ssm_states) t.zero_();
  seqlen_offset = 0;
}

}  // namespace mambadiff
