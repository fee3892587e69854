// Fuzz target model_script: a tiny Mamba2 model (shapes from the bytes, weights from a seed, built
// in memory as the property tests build theirs: tests/random_model.h) and a script of cache ops.
// Every available path must agree with the float64 reference after every op -- logits, layer
// outputs, cache attributes and contents, dispatch trace -- under the harness's comparison
// (harness/compare.h compare_results); a restore must give back the snapshot's cache bit for bit
// on every path. A failure is written as a mambadiff.case.v1 case (fuzz_support.h).
//
// Input bytes (missing bytes read as 0):
//   [0] heads 1..4  [1] head_dim 1..4  [2] d_state 1..8  [3] groups (a divisor of heads)
//   (a model that comes out one channel wide is widened to two: decode_spec says why)
//   [4] expand 1..2  [5] conv kernel 1..4  [6] chunk 1..8  [7] layers 1..2  [8] vocab 8..32
//   [9] A_log range  [10] dt range  [11] time_step_limit  [12] flags (bias, conv bias, tied,
//   grouped norm, residual fp32)  [13..16] weight seed  [17] batch 1..2  [18] dtype (the `dtype`
//   op: float32, or bfloat16 when byte % 4 == 3)
//   then ops, 2 bytes each (at most kMaxOps): kind, argument --
//     forward (argument: T 1..12), step (1 token), continue (T 2..9), inject (layer, scale,
//     broadcast), snapshot (name s0..s3), restore (name; skipped when never taken), reset.
//   Tokens and deltas come from seeds derived from the weight seed and the op's index.
//
// MAMBADIFF_FUZZ_SCENARIO_DIR=DIR (the plain replay, `fuzz_replay model_script`): instead of comparing
// paths, each input the reference runs is written as DIR/<fnv1a64 of the bytes>/{model/,
// scenario.json} -- a checkpoint and a mambadiff.scenario.v1 scenario -- so that other systems'
// exporters play the corpus (scripts/gpu_ecosystem.sh, docs/external.md).
#include <fmt/format.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <map>

#include "engine/errors.h"
#include "engine/tensor_bytes.h"
#include "fuzz/fuzz_support.h"
#include "fuzz/kernel_counters.h"
#include "harness/path_registry.h"
#include "harness/tolerance_baseline.h"
#include "tests/random_model.h"

namespace mambadiff::fuzz::model_script_target {
namespace {

using props::ModelSpec;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr size_t kMaxOps = 8;  // a script of 8 ops reaches every branch pair; longer ones only cost time

ModelSpec decode_spec(ByteReader& in) {
  ModelSpec s;
  s.family = "model_script";
  s.num_heads = in.in_range(1, 4);
  s.head_dim = in.in_range(1, 4);
  s.state_size = in.in_range(1, 8);
  s.n_groups = in.pick(props::divisors(s.num_heads));
  const int64_t expand = in.in_range(1, 2);
  s.expand = (s.num_heads * s.head_dim) % expand == 0 ? expand : 1;
  s.hidden_size = s.num_heads * s.head_dim / s.expand;
  // A one-channel model's RMSNorm is sign(x) (x / sqrt(x^2 + eps)): where its residual stream
  // crosses zero the logits jump between two values, and no tolerance derived from rounding bounds
  // that (a bf16 campaign: the chunked path's residual 2e-3 of its scale on the other side of 0 from
  // the reference's, logits 0.99 of their scale apart, both correct). The fuzzed models are at least
  // two channels wide; inputs that decoded to one channel widen (the rest decode as before).
  if (s.hidden_size == 1) {
    s.expand = 1;
    s.hidden_size = s.num_heads * s.head_dim;
  }
  if (s.hidden_size == 1) {
    s.head_dim = 2;
    s.hidden_size = 2;
  }
  s.conv_kernel = in.in_range(1, 4);
  s.chunk_size = in.in_range(1, 8);
  s.num_layers = in.in_range(1, 2);
  s.vocab_size = in.in_range(8, 32);
  // The property tests' edge ranges (tests/property_support.h gen_edge_spec).
  const auto a = in.pick<std::pair<double, double>>({{0.0, std::log(16.0)}, {-3.0, 4.0}, {-3.0, -3.0}, {4.0, 4.0}});
  s.a_log_min = a.first;
  s.a_log_max = a.second;
  const auto dt = in.pick<std::pair<double, double>>({{1e-3, 0.1}, {1e-4, 5.0}, {5.0, 5.0}, {1.0, 5.0}});
  s.dt_min = dt.first;
  s.dt_max = dt.second;
  const auto lim = in.pick<std::pair<double, double>>({{0.0, kInf}, {0.0, 0.01}, {0.001, 0.1}, {0.5, 2.0}});
  s.time_step_min = lim.first;
  s.time_step_max = lim.second;
  const uint8_t flags = in.byte();
  s.use_bias = flags & 1;
  s.use_conv_bias = flags & 2;
  s.tie_embeddings = flags & 4;
  s.grouped_norm = flags & 8;
  s.residual_in_fp32 = !(flags & 16);
  s.seed = in.u32();
  return s;
}

ScenarioOp forward_op(int64_t batch, int64_t len, int64_t vocab, uint64_t seed) {
  ScenarioOp op;
  op.kind = OpKind::kForward;
  op.tokens = torch::randint(vocab, {batch, len}, props::torch_generator(seed), torch::kInt64);
  return op;
}

Scenario decode_script(ByteReader& in, const ModelSpec& s, int64_t batch) {
  Scenario sc;
  sc.dtype = in.byte() % 4 == 3 ? torch::kBFloat16 : torch::kFloat32;
  std::map<std::string, bool> taken;
  for (size_t i = 0; i < kMaxOps && in.remaining() >= 2; ++i) {
    const uint8_t kind = in.byte(), arg = in.byte();
    const uint64_t seed = uint64_t{s.seed} * 1000003ULL + i;
    switch (kind % 7) {
      case 0: sc.ops.push_back(forward_op(batch, 1 + arg % 12, s.vocab_size, seed)); break;
      case 1: sc.ops.push_back(forward_op(batch, 1, s.vocab_size, seed)); break;
      case 2: sc.ops.push_back(forward_op(batch, 2 + arg % 8, s.vocab_size, seed)); break;
      case 3: {
        ScenarioOp op;
        op.kind = OpKind::kInject;
        op.layer = arg % s.num_layers;
        const bool broadcast = arg & 0x40;
        std::vector<int64_t> shape = {s.num_heads, s.head_dim, s.state_size};
        if (!broadcast) shape.insert(shape.begin(), batch);
        const double scale = (arg >> 1 & 0x1f) / 8.0;  // 0 (an exact no-op) .. 3.9
        op.delta = torch::randn(shape, props::torch_generator(seed), torch::kFloat32) * scale;
        sc.ops.push_back(op);
        break;
      }
      case 4: {
        ScenarioOp op;
        op.kind = OpKind::kSnapshot;
        op.name = fmt::format("s{}", arg % 4);
        taken[op.name] = true;
        sc.ops.push_back(op);
        break;
      }
      case 5: {
        ScenarioOp op;
        op.kind = OpKind::kRestore;
        op.name = fmt::format("s{}", arg % 4);
        if (taken.count(op.name)) sc.ops.push_back(op);  // a restore of a snapshot never taken is invalid
        break;
      }
      default: {
        ScenarioOp op;
        op.kind = OpKind::kReset;
        sc.ops.push_back(op);
      }
    }
  }
  if (sc.num_forward_ops() == 0) sc.ops.push_back(forward_op(batch, 3, s.vocab_size, s.seed));  // nothing to compare otherwise
  return sc;
}

// The first restore op whose cache differs in a byte from the cache at its snapshot; -1 if none.
struct RestoreMismatch {
  size_t op = 0;
  int64_t layer = -1;
  std::string tensor;
};
std::optional<RestoreMismatch> restore_mismatch(const Scenario& sc, const ScenarioResult& r) {
  std::map<std::string, size_t> snapshot_at;
  for (size_t i = 0; i < sc.ops.size(); ++i) {
    const ScenarioOp& op = sc.ops[i];
    if (op.kind == OpKind::kSnapshot) snapshot_at[op.name] = i;
    if (op.kind != OpKind::kRestore) continue;
    const CacheState& want = r.ops[snapshot_at.at(op.name)].cache;
    const CacheState& got = r.ops[i].cache;
    if (want.seqlen_offset != got.seqlen_offset) return RestoreMismatch{i, -1, "cache.seqlen_offset"};
    for (size_t l = 0; l < want.ssm_states.size(); ++l) {
      if (!bytes_equal(want.ssm_states[l], got.ssm_states[l]))
        return RestoreMismatch{i, static_cast<int64_t>(l), "cache.ssm_states"};
      if (!bytes_equal(want.conv_states[l], got.conv_states[l]))
        return RestoreMismatch{i, static_cast<int64_t>(l), "cache.conv_states"};
    }
  }
  return std::nullopt;
}

// The branch the reference dispatched at (op, layer), or "-" when the op is not a forward.
std::string branch_at(const ScenarioResult& ref, size_t op, int64_t layer) {
  const OpResult& o = ref.ops.at(op);
  if (o.kind != OpKind::kForward || o.trace.empty()) return "-";
  return branch_name(o.trace.at(static_cast<size_t>(std::max<int64_t>(layer, 0))).branch);
}

}  // namespace
}  // namespace mambadiff::fuzz::model_script_target

MAMBADIFF_FUZZ_INITIALIZE(model_script) {
  mambadiff::fuzz::init_differential_target();
  return 0;
}

MAMBADIFF_FUZZ_TEST_ONE_INPUT(model_script) {
  using namespace mambadiff::fuzz::model_script_target;  // this target's helpers
  const mambadiff::fuzz::PublishKernelCoverageOnReturn kernel_coverage;  // fuzz/kernel_counters.h
  using namespace mambadiff;
  using namespace mambadiff::fuzz;
  // No autograd: the paths' forwards need no graph, and each ATen op skips its bookkeeping.
  c10::InferenceMode no_autograd;
  ByteReader in(data, size);
  const ModelSpec spec = decode_spec(in);
  const int64_t batch = in.in_range(1, 2);
  Mamba2Checkpoint ck;
  try {
    ck = props::make_checkpoint(spec);
  } catch (const InputError&) {
    return 0;  // a config the product rejects: no path is ever built for it
  }
  ck.directory = "model";
  Scenario sc = decode_script(in, spec, batch);
  ReferenceRun ref;
  try {
    ref = run_reference(sc, ck, /*stochastic=*/false);  // added below only where a comparison diverges
  } catch (const InputError&) {
    return 0;  // a script the reference rejects (a paths' rejection is compared below)
  }
  if (const char* out = std::getenv("MAMBADIFF_FUZZ_SCENARIO_DIR"); out != nullptr && *out != '\0') {
    const std::filesystem::path dir = std::filesystem::path(out) / fmt::format("{:016x}", fnv1a64(data, size));
    ck.save(dir / "model");
    sc.model_dir = dir / "model";
    sc.save(dir / "scenario.json");
    return 0;
  }
  bool stochastic_sampled = false;
  for (const std::string& name : paths_under_test(sc.dtype)) {
    CaseRun run;
    run.path_a = name;
    run.path_b = "reference";
    run.b = run.reference = ref.reference;
    try {
      run.a = evaluate_path(name, sc, ck);
    } catch (const PathUnavailable&) {
      continue;  // no device for it here, or not this dtype
    } catch (const std::exception& e) {
      report_finding({"model_script", "run", "-", "reject", name},
                     fmt::format("{} rejects a script the reference runs: {}", name, first_line(e)), nullptr, nullptr,
                     nullptr);
    }
    run.comparison = compare_results(run.a, run.b, run.reference, ref.baselines);
    if (!run.comparison.agree && !stochastic_sampled) {  // the whole baseline: the same verdict as check's
      add_stochastic_baseline(ref.baselines.front(), sc, ck, ref.reference);
      stochastic_sampled = true;
      run.comparison = compare_results(run.a, run.b, run.reference, ref.baselines);
    }
    run.baselines = ref.baselines;
    if (!run.comparison.agree) {
      const Divergence& d = *run.comparison.first_divergence;
      report_finding({"model_script", fmt::format("{}:{}", d.op, op_kind_name(run.a.ops.at(d.op).kind)),
                      d.layer < 0 ? "-" : std::to_string(d.layer), d.tensor, branch_at(ref.reference, d.op, d.layer)},
                     fmt::format("{} vs reference: {}", name, describe(d)), &sc, &ck, &run);
    }
    for (const ScenarioResult* r : {&run.a, &ref.reference}) {
      if (const auto m = restore_mismatch(sc, *r)) {
        report_finding({"model_script", fmt::format("{}:restore", m->op), m->layer < 0 ? "-" : std::to_string(m->layer),
                        m->tensor, "restore"},
                       fmt::format("{}: op {} (restore) did not give back the snapshot's {} bit for bit", r->path,
                                   m->op, m->tensor),
                       &sc, &ck, &run);
      }
    }
  }
  return 0;
}
