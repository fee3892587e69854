// Mutant execution paths: the `chunked` path with one logical kernel (or its dispatch) broken the
// way a real implementation broke it. Each overrides one virtual kernel of ChunkedPath; the broken
// line is marked MUTANT(<name>). The catalog (catalog.h) names the public report of each.
#pragma once

#include <string>

#include "engine/chunked_path.h"
#include "mutants/buggy_ssd_chunk_scan.h"

namespace mambadiff::mutants {

// The `chunked` path on the CPU under a mutant's name ("mutant:<name>").
class MutantPath : public ChunkedPath {
 public:
  MutantPath(std::string name, const Mamba2Checkpoint& checkpoint, torch::ScalarType dtype)
      : ChunkedPath(checkpoint, dtype, torch::kCPU), name_(std::move(name)) {}
  std::string name() const override { return name_; }

 private:
  std::string name_;
};

// The incident: a stand-in cache without seqlen_offset looks empty to the model, so every forward
// is dispatched as a prefill (zero state, zero conv history).
class StandInCacheDispatch : public MutantPath {
 public:
  using MutantPath::MutantPath;
 protected:
  ForwardOutput run(const torch::Tensor& tokens, Mamba2Cache& cache, Branch branch) override;
};

// A populated cache run through the prefill branch when T > 1 (decode steps still use the cache).
class ContinueAsPrefill : public MutantPath {
 public:
  using MutantPath::MutantPath;
 protected:
  ForwardOutput run(const torch::Tensor& tokens, Mamba2Cache& cache, Branch branch) override;
};

// The single-token decode does not clamp dt to time_step_limit.
class DecodeWithoutDtClamp : public MutantPath {
 public:
  using MutantPath::MutantPath;
 protected:
  torch::Tensor discretize_dt(int64_t layer, const torch::Tensor& dt_raw, Branch branch) override;
};

// dt clamped below by the config's `time_step_min` (an initialization range, 0.001 by default)
// and not to `time_step_limit`.
class DtClampedToTimeStepMin : public MutantPath {
 public:
  DtClampedToTimeStepMin(std::string name, const Mamba2Checkpoint& checkpoint, torch::ScalarType dtype);
 protected:
  torch::Tensor discretize_dt(int64_t layer, const torch::Tensor& dt_raw, Branch branch) override;
 private:
  double time_step_min_;  // config.json "time_step_min"
};

// Groups broadcast to heads with `repeat` (head h reads group h % G) instead of
// `repeat_interleave` (group h / (H/G)), in the scan and in the decode step.
class RepeatNotInterleave : public MutantPath {
 public:
  using MutantPath::MutantPath;
 protected:
  std::pair<torch::Tensor, torch::Tensor> ssd_chunk_scan(int64_t layer, const torch::Tensor& x, const torch::Tensor& dt,
                                                     const torch::Tensor& Bm, const torch::Tensor& Cm,
                                                     const torch::Tensor& initial_state) override;
  std::pair<torch::Tensor, torch::Tensor> selective_state_update(int64_t layer, const torch::Tensor& x, const torch::Tensor& dt,
                                                       const torch::Tensor& Bm, const torch::Tensor& Cm,
                                                       const torch::Tensor& state) override;
};

// The gated RMSNorm with the other grouping than the config names (grouped <-> ungrouped).
class OtherGatedNormGrouping : public MutantPath {
 public:
  using MutantPath::MutantPath;
 protected:
  torch::Tensor gated_rms_norm(int64_t layer, const torch::Tensor& y, const torch::Tensor& gate) override;
};

// A cached multi-token forward ignores the cached state: the scan starts from zero.
class ContinueDropsInitialState : public MutantPath {
 public:
  using MutantPath::MutantPath;
 protected:
  std::pair<torch::Tensor, torch::Tensor> ssd_chunk_scan(int64_t layer, const torch::Tensor& x, const torch::Tensor& dt,
                                                     const torch::Tensor& Bm, const torch::Tensor& Cm,
                                                     const torch::Tensor& initial_state) override;
};

// The SSM state kept in bfloat16: rounded after every forward (scan and decode step alike).
class StateRoundedToBf16 : public MutantPath {
 public:
  using MutantPath::MutantPath;
 protected:
  std::pair<torch::Tensor, torch::Tensor> ssd_chunk_scan(int64_t layer, const torch::Tensor& x, const torch::Tensor& dt,
                                                     const torch::Tensor& Bm, const torch::Tensor& Cm,
                                                     const torch::Tensor& initial_state) override;
  std::pair<torch::Tensor, torch::Tensor> selective_state_update(int64_t layer, const torch::Tensor& x, const torch::Tensor& dt,
                                                       const torch::Tensor& Bm, const torch::Tensor& Cm,
                                                       const torch::Tensor& state) override;
};

// bf16 runs only (float32 runs are untouched): the SSM state is stored in bfloat16, converted by
// truncation (the low 16 bits dropped, round toward zero, instead of round-to-nearest-even), every
// kTokensPerStore tokens: the prefill and continue scans run in pieces of that many tokens with the
// state between them truncated, and the decode step truncates the state it writes. Its error is a
// few percent of the state (bias toward zero compounding over tokens); rounding to nearest instead
// stays within bf16's own noise (logits 0.5..1.5% of their scale on the embedded models) and no
// tolerance derived from a bf16 run can tell it from a correct kernel.
class Bf16RunStateTruncatedToBf16 : public MutantPath {
 public:
  using MutantPath::MutantPath;
  static constexpr int64_t kTokensPerStore = 2;  // "every few tokens", below every chunk size
 protected:
  std::pair<torch::Tensor, torch::Tensor> ssd_chunk_scan(int64_t layer, const torch::Tensor& x, const torch::Tensor& dt,
                                                     const torch::Tensor& Bm, const torch::Tensor& Cm,
                                                     const torch::Tensor& initial_state) override;
  std::pair<torch::Tensor, torch::Tensor> selective_state_update(int64_t layer, const torch::Tensor& x, const torch::Tensor& dt,
                                                       const torch::Tensor& Bm, const torch::Tensor& Cm,
                                                       const torch::Tensor& state) override;
};

// The chunked scan replaced by buggy_ssd_chunk_scan with one ScanBug.
class BuggyScan : public MutantPath {
 public:
  BuggyScan(std::string name, const Mamba2Checkpoint& checkpoint, torch::ScalarType dtype, ScanBug bug)
      : MutantPath(std::move(name), checkpoint, dtype), bug_(bug) {}
 protected:
  std::pair<torch::Tensor, torch::Tensor> ssd_chunk_scan(int64_t layer, const torch::Tensor& x, const torch::Tensor& dt,
                                                     const torch::Tensor& Bm, const torch::Tensor& Cm,
                                                     const torch::Tensor& initial_state) override;
 private:
  ScanBug bug_;
};

}  // namespace mambadiff::mutants
