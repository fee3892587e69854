#include "mutants/path_mutants.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "engine/config.h"

namespace mambadiff::mutants {

ForwardOutput StandInCacheDispatch::run(const torch::Tensor& tokens, Mamba2Cache& cache, Branch) {
  // MUTANT(stand-in-cache): no seqlen_offset to read, so the cache always looks empty.
  return ChunkedPath::run(tokens, cache, Branch::kPrefill);
}

ForwardOutput ContinueAsPrefill::run(const torch::Tensor& tokens, Mamba2Cache& cache, Branch branch) {
  // MUTANT(continue-as-prefill): only T == 1 is treated as "has history".
  return ChunkedPath::run(tokens, cache, branch == Branch::kContinue ? Branch::kPrefill : branch);
}

torch::Tensor DecodeWithoutDtClamp::discretize_dt(int64_t l, const torch::Tensor& dt_raw, Branch branch) {
  if (branch != Branch::kStep) return ChunkedPath::discretize_dt(l, dt_raw, branch);
  // MUTANT(decode-no-dt-clamp): softplus only, no clamp to time_step_limit on the decode branch.
  return torch::softplus(dt_raw.to(torch::kFloat32) + weights_.layers[static_cast<size_t>(l)].dt_bias.to(torch::kFloat32));
}

namespace {
// config.json's "time_step_min" (the dt initialization range, not the limit); HF's default 0.001.
double read_time_step_min(const Mamba2Checkpoint& ck) {
  constexpr double kHfDefault = 1e-3;  // transformers' Mamba2Config time_step_min
  std::ifstream in(ck.directory / "config.json");
  if (!in) return kHfDefault;  // a checkpoint built in memory
  std::stringstream ss;
  ss << in.rdbuf();
  const auto j = parse_json_allowing_nonfinite(ss.str(), (ck.directory / "config.json").string());
  return j.contains("time_step_min") ? json_to_double(j["time_step_min"], "config.json", "time_step_min") : kHfDefault;
}
}  // namespace

DtClampedToTimeStepMin::DtClampedToTimeStepMin(std::string name, const Mamba2Checkpoint& ck, torch::ScalarType dtype)
    : MutantPath(std::move(name), ck, dtype), time_step_min_(read_time_step_min(ck)) {}

torch::Tensor DtClampedToTimeStepMin::discretize_dt(int64_t l, const torch::Tensor& dt_raw, Branch) {
  // MUTANT(dt-clamp-time-step-min): torch.clamp(dt, self.time_step_min) -- a floor from the init
  // range and no upper limit, instead of clamp(dt, *time_step_limit).
  return torch::softplus(dt_raw.to(torch::kFloat32) + weights_.layers[static_cast<size_t>(l)].dt_bias.to(torch::kFloat32))
      .clamp_min(time_step_min_);
}

std::pair<torch::Tensor, torch::Tensor> RepeatNotInterleave::ssd_chunk_scan(int64_t l, const torch::Tensor& x,
                                                                        const torch::Tensor& dt, const torch::Tensor& Bm,
                                                                        const torch::Tensor& Cm,
                                                                        const torch::Tensor& initial_state) {
  const int64_t H = x.size(2), G = Bm.size(2);
  // MUTANT(repeat-groups): Bm, Cm [B, T, G, N] -> [B, T, H, N] by `repeat`: head h gets group h % G.
  return ChunkedPath::ssd_chunk_scan(l, x, dt, Bm.repeat({1, 1, H / G, 1}), Cm.repeat({1, 1, H / G, 1}), initial_state);
}

std::pair<torch::Tensor, torch::Tensor> RepeatNotInterleave::selective_state_update(int64_t l, const torch::Tensor& x,
                                                                          const torch::Tensor& dt, const torch::Tensor& Bm,
                                                                          const torch::Tensor& Cm,
                                                                          const torch::Tensor& state) {
  const int64_t H = x.size(1), G = Bm.size(1);
  // MUTANT(repeat-groups): Bm, Cm [B, G, N] -> [B, H, N] by `repeat`.
  return ChunkedPath::selective_state_update(l, x, dt, Bm.repeat({1, H / G, 1}), Cm.repeat({1, H / G, 1}), state);
}

torch::Tensor OtherGatedNormGrouping::gated_rms_norm(int64_t l, const torch::Tensor& y, const torch::Tensor& gate) {
  // MUTANT(gated-norm-grouping): the group size of the other convention.
  const auto& c = config_;
  const int64_t group = c.gated_norm == GatedNormGrouping::kGrouped ? c.d_inner() : c.d_inner() / c.n_groups;
  return aten_ops::gated_rms_norm(y, gate, weights_.layers[static_cast<size_t>(l)].gated_norm_weight,
                                  c.layer_norm_epsilon, group);
}

std::pair<torch::Tensor, torch::Tensor> ContinueDropsInitialState::ssd_chunk_scan(int64_t l, const torch::Tensor& x,
                                                                              const torch::Tensor& dt,
                                                                              const torch::Tensor& Bm,
                                                                              const torch::Tensor& Cm,
                                                                              const torch::Tensor&) {
  // MUTANT(continue-drops-initial-state): initial_states not passed to the scan.
  return ChunkedPath::ssd_chunk_scan(l, x, dt, Bm, Cm, torch::Tensor());
}

namespace {
torch::Tensor round_to_bf16(const torch::Tensor& state) { return state.to(torch::kBFloat16).to(state.scalar_type()); }
// fp32 -> bf16 by dropping the low 16 bits (round toward zero) instead of round-to-nearest-even.
torch::Tensor truncate_to_bf16(const torch::Tensor& state) {
  constexpr int32_t kBf16Bits = static_cast<int32_t>(0xFFFF0000u);  // sign, exponent, 7 mantissa bits
  return state.to(torch::kFloat32).contiguous().view(torch::kInt32).bitwise_and(kBf16Bits).view(torch::kFloat32);
}
}  // namespace

std::pair<torch::Tensor, torch::Tensor> StateRoundedToBf16::ssd_chunk_scan(int64_t l, const torch::Tensor& x,
                                                                       const torch::Tensor& dt, const torch::Tensor& Bm,
                                                                       const torch::Tensor& Cm,
                                                                       const torch::Tensor& initial_state) {
  auto [y, final_state] = ChunkedPath::ssd_chunk_scan(l, x, dt, Bm, Cm, initial_state);
  return {y, round_to_bf16(final_state)};  // MUTANT(bf16-state): the state is stored in bf16
}

std::pair<torch::Tensor, torch::Tensor> StateRoundedToBf16::selective_state_update(int64_t l, const torch::Tensor& x,
                                                                         const torch::Tensor& dt, const torch::Tensor& Bm,
                                                                         const torch::Tensor& Cm,
                                                                         const torch::Tensor& state) {
  auto [y, new_state] = ChunkedPath::selective_state_update(l, x, dt, Bm, Cm, state);
  return {y, round_to_bf16(new_state)};  // MUTANT(bf16-state): the state is stored in bf16
}

std::pair<torch::Tensor, torch::Tensor> Bf16RunStateTruncatedToBf16::ssd_chunk_scan(int64_t l, const torch::Tensor& x,
                                                                             const torch::Tensor& dt,
                                                                             const torch::Tensor& Bm,
                                                                             const torch::Tensor& Cm,
                                                                             const torch::Tensor& initial_state) {
  if (dtype_ != torch::kBFloat16) return ChunkedPath::ssd_chunk_scan(l, x, dt, Bm, Cm, initial_state);
  // x: [B, T, H, P], dt: [B, T, H], Bm, Cm: [B, T, G, N]; y pieces: [B, piece, H, P]
  const int64_t T = x.size(1);
  std::vector<torch::Tensor> ys;
  torch::Tensor state = initial_state;
  for (int64_t t0 = 0; t0 < T; t0 += kTokensPerStore) {
    const int64_t len = std::min(kTokensPerStore, T - t0);
    auto [y, s] = ChunkedPath::ssd_chunk_scan(l, x.narrow(1, t0, len), dt.narrow(1, t0, len), Bm.narrow(1, t0, len),
                                          Cm.narrow(1, t0, len), state);
    ys.push_back(y);
    state = truncate_to_bf16(s);  // MUTANT(bf16-run-state-truncated): the state stored in bf16, truncated
  }
  return {torch::cat(ys, 1), state};
}

std::pair<torch::Tensor, torch::Tensor> Bf16RunStateTruncatedToBf16::selective_state_update(int64_t l, const torch::Tensor& x,
                                                                               const torch::Tensor& dt,
                                                                               const torch::Tensor& Bm,
                                                                               const torch::Tensor& Cm,
                                                                               const torch::Tensor& state) {
  auto [y, new_state] = ChunkedPath::selective_state_update(l, x, dt, Bm, Cm, state);
  if (dtype_ != torch::kBFloat16) return {y, new_state};
  return {y, truncate_to_bf16(new_state)};  // MUTANT(bf16-run-state-truncated): the state stored in bf16, truncated
}

std::pair<torch::Tensor, torch::Tensor> BuggyScan::ssd_chunk_scan(int64_t l, const torch::Tensor& x, const torch::Tensor& dt,
                                                              const torch::Tensor& Bm, const torch::Tensor& Cm,
                                                              const torch::Tensor& initial_state) {
  return buggy_ssd_chunk_scan(x, dt, A_[static_cast<size_t>(l)], Bm, Cm, weights_.layers[static_cast<size_t>(l)].D,
                              initial_state, chunk_size_, bug_);
}

}  // namespace mambadiff::mutants
