// Properties of the real cache (SPEC §3, §5), checked with RapidCheck on random models built in
// memory (tests/property_support.h): snapshot/restore is exact to the byte and the address,
// injection is plain addition, the cache and the scenario survive a trip through their files, and
// a state machine of cache commands agrees with a model of seqlen_offset, dispatch and states.
// Each property runs at least 200 cases; a failure prints the shrunk case and the
// RC_PARAMS="reproduce=..." line that replays it.
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <map>
#include <rapidcheck/state.h>
#include <set>

#include "engine/safetensors.h"
#include "harness/scenario.h"
#include "harness/scenario_runner.h"
#include "tests/property_support.h"

namespace mambadiff::props {
namespace {

namespace fs = std::filesystem;

// A fresh directory for one case's files (removed by the destructor).
class CaseDir {
 public:
  CaseDir() {
    static std::atomic<int> counter{0};
    // safetensors::write and Scenario::save fsync; on tmpfs that costs nothing (on the build disk
    // it made the round-trip properties 50 s of the budget).
    std::error_code ec;
    fs::path root = "/dev/shm";
    if (!fs::is_directory(root, ec) || ::access(root.c_str(), W_OK) != 0) {
#ifdef MAMBADIFF_TEST_TMP
      root = MAMBADIFF_TEST_TMP;
#else
      root = fs::temp_directory_path();
#endif
    }
    dir_ = root / ("cache_property_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(dir_);
  }
  ~CaseDir() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  const fs::path& path() const { return dir_; }

 private:
  fs::path dir_;
};

// One operation on a cache after a snapshot: any of them must be undone by restore().
struct CacheOp {
  enum Kind { kForward, kStep, kInject, kReset } kind = kForward;
  int64_t length = 1;      // kForward: tokens per row (>= 2: continue, or prefill on an empty cache)
  int64_t layer = 0;       // kInject
  bool broadcast = false;  // kInject: [H, P, N] delta instead of [B, H, P, N]
  double scale = 1.0;      // kInject
  uint32_t seed = 0;       // tokens or delta
};

void showValue(const CacheOp& op, std::ostream& os) {
  switch (op.kind) {
    case CacheOp::kForward: os << "forward(T=" << op.length << ")"; break;
    case CacheOp::kStep: os << "step"; break;
    case CacheOp::kInject:
      os << "inject(layer=" << op.layer << (op.broadcast ? ", [H,P,N]" : ", [B,H,P,N]") << ", scale=" << op.scale << ")";
      break;
    case CacheOp::kReset: os << "reset"; break;
  }
  os << "#" << op.seed;
}

rc::Gen<CacheOp> gen_cache_op(const ModelSpec& spec, bool with_reset) {
  return rc::gen::exec([spec, with_reset] {
    CacheOp op;
    op.kind = *rc::gen::weightedElement<CacheOp::Kind>(
        {{3, CacheOp::kForward}, {3, CacheOp::kStep}, {3, CacheOp::kInject}, {with_reset ? 1u : 0u, CacheOp::kReset}});
    op.length = op.kind == CacheOp::kStep ? 1 : *gen_length(spec.chunk_size, 2 * spec.chunk_size + 2);
    op.layer = *rc::gen::inRange<int64_t>(0, spec.num_layers);
    op.broadcast = *rc::gen::arbitrary<bool>();
    op.scale = *rc::gen::element(1e-3, 1.0, 1e3);
    op.seed = *rc::gen::arbitrary<uint32_t>();
    return op;
  });
}

void apply(const CacheOp& op, ExecutionPath& path, Mamba2Cache& cache) {
  const Mamba2Config& c = path.config();
  switch (op.kind) {
    case CacheOp::kForward:
    case CacheOp::kStep:
      path.forward(random_tokens(cache.batch_size(), op.length, c.vocab_size, op.seed), cache);
      break;
    case CacheOp::kInject:
      cache.inject(op.layer, random_delta(c, cache.batch_size(), op.broadcast, op.scale, op.seed));
      break;
    case CacheOp::kReset: cache.reset(); break;
  }
}

// Plants NaNs with payloads, -0.0, inf and a subnormal into every state tensor of `cache`.
void plant_everywhere(Mamba2Cache& cache, uint32_t seed) {
  for (size_t l = 0; l < cache.ssm_states.size(); ++l) {
    plant_special_values(cache.ssm_states[l], seed + 2 * l, 6);
    plant_special_values(cache.conv_states[l], seed + 2 * l + 1, 6);
  }
}

// ---------------------------------------------------------------------------------------------
// SPEC §3: after any sequence of operations, restore() leaves every attribute and every byte of
// every state tensor identical to the snapshot (NaN payloads included), in the same storage.
RC_GTEST_PROP(CacheProperty, RestoreIsExact, (const ModelSpec& spec)) {
  RC_TAG(spec.family);
  const PathKind kind = *rc::gen::element(PathKind::kReference, PathKind::kChunked32);
  const int64_t batch = *rc::gen::inRange<int64_t>(1, 4);
  const auto history = *rc::gen::container<std::vector<CacheOp>>(
      static_cast<size_t>(*rc::gen::inRange(0, 3)), gen_cache_op(spec, /*with_reset=*/false));
  const bool plant = *rc::gen::weightedElement<bool>({{3, true}, {1, false}});
  const uint32_t plant_seed = *rc::gen::arbitrary<uint32_t>();
  const auto after = *rc::gen::container<std::vector<CacheOp>>(static_cast<size_t>(*rc::gen::inRange(1, 7)),
                                                               gen_cache_op(spec, /*with_reset=*/true));

  const auto ck = make_checkpoint(spec);
  auto path = build_path(kind, ck);
  Mamba2Cache cache = path->new_cache(batch);
  for (const auto& op : history) apply(op, *path, cache);
  if (plant) plant_everywhere(cache, plant_seed);

  const CacheImage before = image_of(cache);
  const Mamba2Cache::Snapshot snap = cache.snapshot();
  for (const auto& op : after) apply(op, *path, cache);
  cache.restore(snap);
  const std::string diff = image_difference(before, image_of(cache), /*same_storage=*/true);
  PROP_ASSERT(diff.empty(), "after restore(): " << diff);

  // The snapshot is a copy: nothing done to the cache reached it, and it restores again.
  for (size_t l = 0; l < snap.ssm_states.size(); ++l) {
    PROP_ASSERT(raw_bytes(snap.ssm_states[l]) == before.ssm_bytes[l] &&
                    raw_bytes(snap.conv_states[l]) == before.conv_bytes[l],
                "the snapshot's layer " << l << " changed while the cache was used (aliased storage)");
  }
  for (const auto& op : after) apply(op, *path, cache);
  cache.restore(snap);
  const std::string again = image_difference(before, image_of(cache), /*same_storage=*/true);
  PROP_ASSERT(again.empty(), "after a second restore() of the same snapshot: " << again);
}

// ---------------------------------------------------------------------------------------------
// inject(layer, 0) changes no byte of the cache, and what runs after it is bitwise what runs
// without it. (IEEE addition of +0.0 turns a -0.0 into +0.0, so this holds for states the model
// computed, which hold no -0.0; it is why no special values are planted here.)
RC_GTEST_PROP(CacheProperty, ZeroInjectionIsNoOp, (const ModelSpec& spec)) {
  RC_TAG(spec.family);
  const PathKind kind = *rc::gen::element(PathKind::kReference, PathKind::kChunked32);
  const int64_t batch = *rc::gen::inRange<int64_t>(1, 4);
  const int64_t prefill = *gen_length(spec.chunk_size, 2 * spec.chunk_size + 2);
  const int64_t next = *rc::gen::element<int64_t>(1, 1, 2, 3, spec.chunk_size + 1);
  const int64_t layer = *rc::gen::inRange<int64_t>(0, spec.num_layers);
  const bool broadcast = *rc::gen::arbitrary<bool>();
  const bool f64 = *rc::gen::arbitrary<bool>();
  const uint32_t seed = *rc::gen::arbitrary<uint32_t>();

  const auto ck = make_checkpoint(spec);
  auto path = build_path(kind, ck);
  const auto& c = ck.config;
  const torch::Tensor first = random_tokens(batch, prefill, c.vocab_size, seed);
  const torch::Tensor second = random_tokens(batch, next, c.vocab_size, seed + 1);
  Mamba2Cache injected = path->new_cache(batch), control = path->new_cache(batch);
  path->forward(first, injected);
  path->forward(first, control);

  const CacheImage before = image_of(injected);
  const torch::Tensor zero = random_delta(c, batch, broadcast, 1.0, seed, f64 ? torch::kFloat64 : torch::kFloat32).zero_();
  injected.inject(layer, zero);
  const std::string diff = image_difference(before, image_of(injected), /*same_storage=*/true);
  PROP_ASSERT(diff.empty(), "inject(" << layer << ", zeros " << shape_str(zero) << ") changed the cache: " << diff);

  const torch::Tensor a = path->forward(second, injected).logits, b = path->forward(second, control).logits;
  PROP_ASSERT(bytes_equal(a, b), "logits of the forward after a zero injection differ from those without it");
  const std::string after = image_difference(image_of(control), image_of(injected), /*same_storage=*/false);
  PROP_ASSERT(after.empty(), "the cache after the next forward differs from the one without injection: " << after);
}

// inject(layer, Δ) then inject(layer, -Δ) returns every state element to within the rounding of
// two additions: |s'' - s| <= eps (|s| + |Δ|) (each addition rounds once, by at most eps/2 of
// its result); the conv windows, the other layers and seqlen_offset are untouched.
RC_GTEST_PROP(CacheProperty, InjectThenNegativeInjectReturns, (const ModelSpec& spec)) {
  RC_TAG(spec.family);
  const PathKind kind = *rc::gen::element(PathKind::kReference, PathKind::kChunked32);
  const int64_t batch = *rc::gen::inRange<int64_t>(1, 4);
  const int64_t prefill = *gen_length(spec.chunk_size, 2 * spec.chunk_size + 2);
  const int64_t layer = *rc::gen::inRange<int64_t>(0, spec.num_layers);
  const bool broadcast = *rc::gen::arbitrary<bool>();
  const double scale = *rc::gen::element(1e-6, 1e-2, 1.0, 1e2, 1e4);
  const bool f64 = *rc::gen::arbitrary<bool>();
  const uint32_t seed = *rc::gen::arbitrary<uint32_t>();

  const auto ck = make_checkpoint(spec);
  auto path = build_path(kind, ck);
  Mamba2Cache cache = path->new_cache(batch);
  path->forward(random_tokens(batch, prefill, ck.config.vocab_size, seed), cache);
  const CacheImage before = image_of(cache);
  const torch::Tensor s0 = cache.ssm_states[static_cast<size_t>(layer)].clone();  // [B, H, P, N]

  const torch::Tensor delta = random_delta(ck.config, batch, broadcast, scale, seed, f64 ? torch::kFloat64 : torch::kFloat32);
  cache.inject(layer, delta);
  cache.inject(layer, -delta);

  const torch::Tensor s2 = cache.ssm_states[static_cast<size_t>(layer)];
  const double eps = std::numeric_limits<float>::epsilon();
  const double eps_state = cache.state_dtype() == torch::kFloat64 ? std::numeric_limits<double>::epsilon() : eps;
  const torch::Tensor d = delta.to(cache.state_dtype()).to(torch::kFloat64).expand_as(s0);  // Δ as the cache adds it
  const torch::Tensor bound = eps_state * (s0.to(torch::kFloat64).abs() + d.abs()) +
                              std::numeric_limits<double>::denorm_min();
  const torch::Tensor err = (s2.to(torch::kFloat64) - s0.to(torch::kFloat64)).abs();
  const double worst = (err / bound).max().item<double>();
  PROP_ASSERT(worst <= 1.0, "layer " << layer << ": |s'' - s| reaches " << worst << "x eps(|s| + |delta|)");

  CacheImage after = image_of(cache);
  PROP_ASSERT(after.seqlen_offset == before.seqlen_offset, "inject moved seqlen_offset");
  for (size_t l = 0; l < before.ssm_bytes.size(); ++l) {
    PROP_ASSERT(after.conv_bytes[l] == before.conv_bytes[l], "inject changed conv_states[" << l << "]");
    if (static_cast<int64_t>(l) != layer) {
      PROP_ASSERT(after.ssm_bytes[l] == before.ssm_bytes[l], "inject into layer " << layer << " changed layer " << l);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// SPEC §5 file formats: a cache written to safetensors and read back is bitwise the same cache
// (NaN payloads included) and runs on bitwise alike.
RC_GTEST_PROP(CacheProperty, RoundTripCacheThroughSafetensors, (const ModelSpec& spec)) {
  RC_TAG(spec.family);
  // bfloat16 activations give a bfloat16 conv window beside a float32 state.
  const auto dtype = *rc::gen::element(torch::kFloat64, torch::kFloat32, torch::kBFloat16);
  const int64_t batch = *rc::gen::inRange<int64_t>(1, 4);
  const int64_t prefill = *gen_length(spec.chunk_size, 2 * spec.chunk_size + 2);
  const int64_t next = *rc::gen::element<int64_t>(1, 2, spec.chunk_size + 1);
  const bool plant = *rc::gen::arbitrary<bool>();
  const uint32_t seed = *rc::gen::arbitrary<uint32_t>();

  const auto ck = make_checkpoint(spec);
  std::unique_ptr<ExecutionPath> path;
  if (dtype == torch::kFloat64) {
    path = build_path(PathKind::kReference, ck);
  } else {
    path = std::make_unique<ChunkedPath>(ck, dtype, torch::kCPU);
  }
  const auto& c = ck.config;
  Mamba2Cache cache = path->new_cache(batch);
  path->forward(random_tokens(batch, prefill, c.vocab_size, seed), cache);
  if (plant) plant_everywhere(cache, seed);

  CaseDir dir;
  const fs::path file = dir.path() / "cache.safetensors";
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (int64_t l = 0; l < cache.num_layers(); ++l) {
    tensors.emplace_back("cache.ssm_states." + std::to_string(l), cache.ssm_states[static_cast<size_t>(l)]);
    tensors.emplace_back("cache.conv_states." + std::to_string(l), cache.conv_states[static_cast<size_t>(l)]);
  }
  tensors.emplace_back("cache.seqlen_offset", torch::tensor({cache.seqlen_offset}, torch::kInt64));
  safetensors::write(file, tensors, {{"path", path->name()}});

  const auto f = safetensors::File::open(file);
  for (const auto& [name, t] : tensors) {
    PROP_ASSERT(f.contains(name), "tensor '" << name << "' missing after the round trip");
    const torch::Tensor back = f.tensor(name);
    PROP_ASSERT(bytes_equal(back, t), "tensor '" << name << "' (" << c10::toString(t.scalar_type()) << " "
                                                 << shape_str(t) << ") came back as " << c10::toString(back.scalar_type())
                                                 << " " << shape_str(back) << " or with other bytes");
  }
  Mamba2Cache loaded = path->new_cache(batch);
  for (int64_t l = 0; l < loaded.num_layers(); ++l) {
    copy_bytes(loaded.ssm_states[static_cast<size_t>(l)], f.tensor("cache.ssm_states." + std::to_string(l)));
    copy_bytes(loaded.conv_states[static_cast<size_t>(l)], f.tensor("cache.conv_states." + std::to_string(l)));
  }
  loaded.seqlen_offset = f.tensor("cache.seqlen_offset").item<int64_t>();
  const std::string diff = image_difference(image_of(cache), image_of(loaded), /*same_storage=*/false);
  PROP_ASSERT(diff.empty(), "the loaded cache differs: " << diff);

  const torch::Tensor more = random_tokens(batch, next, c.vocab_size, seed + 1);
  const torch::Tensor a = path->forward(more, cache).logits, b = path->forward(more, loaded).logits;
  PROP_ASSERT(bytes_equal(a, b), "the loaded cache runs to other logits than the original");
}

// A scenario written with Scenario::save and read back with Scenario::load is the same scenario
// and runs (run_scenario) to the same outputs, bitwise.
RC_GTEST_PROP(CacheProperty, RoundTripScenarioRunsBitwise, (const ModelSpec& spec)) {
  RC_TAG(spec.family);
  const PathKind kind = *rc::gen::element(PathKind::kReference, PathKind::kChunked32);
  const int64_t batch = *rc::gen::inRange<int64_t>(1, 4);
  const auto ops = *gen_script(spec, 8);

  const auto ck = make_checkpoint(spec);
  auto path = build_path(kind, ck);
  CaseDir dir;
  Scenario original = to_scenario(ops, ck.config, batch);
  original.model_dir = dir.path() / "model";
  original.file = dir.path() / "case.json";
  original.save(original.file);
  const Scenario loaded = Scenario::load(original.file);

  PROP_ASSERT(loaded.ops.size() == original.ops.size(), "op count " << loaded.ops.size() << " != " << original.ops.size());
  PROP_ASSERT(loaded.dtype == original.dtype, "dtype changed");
  PROP_ASSERT(fs::weakly_canonical(loaded.model_dir) == fs::weakly_canonical(original.model_dir),
              "model dir " << loaded.model_dir << " != " << original.model_dir);
  for (size_t i = 0; i < ops.size(); ++i) {
    const ScenarioOp &a = original.ops[i], &b = loaded.ops[i];
    PROP_ASSERT(a.kind == b.kind && a.layer == b.layer && a.name == b.name, "op " << i << " changed");
    if (a.kind == OpKind::kForward) PROP_ASSERT(bytes_equal(a.tokens, b.tokens), "op " << i << ": tokens changed");
    if (a.kind == OpKind::kInject) PROP_ASSERT(bytes_equal(a.delta, b.delta), "op " << i << ": delta changed");
  }

  const ScenarioResult ra = run_scenario(original, *path), rb = run_scenario(loaded, *path);
  for (size_t i = 0; i < ops.size(); ++i) {
    const OpResult &a = ra.ops[i], &b = rb.ops[i];
    if (a.kind == OpKind::kForward) {
      PROP_ASSERT(bytes_equal(a.logits, b.logits), "op " << i << ": logits differ after the round trip");
      PROP_ASSERT(a.trace == b.trace, "op " << i << ": dispatch " << trace_string(b.trace) << " != " << trace_string(a.trace));
    }
    for (size_t l = 0; l < a.cache.ssm_states.size(); ++l) {
      PROP_ASSERT(bytes_equal(a.cache.ssm_states[l], b.cache.ssm_states[l]) &&
                      bytes_equal(a.cache.conv_states[l], b.cache.conv_states[l]) &&
                      a.cache.seqlen_offset == b.cache.seqlen_offset,
                  "op " << i << ": the cache of layer " << l << " differs after the round trip");
    }
  }
}

// ---------------------------------------------------------------------------------------------
// A state machine over the cache commands, checked against a model of what SPEC §3 says they do.
struct CacheModel {
  int64_t seqlen_offset = 0;
  std::map<std::string, int64_t> snapshots;  // name -> seqlen_offset when taken
  int64_t num_layers = 1;
  int64_t chunk_size = 1;
};

struct CacheSut {
  ExecutionPath* path = nullptr;
  Mamba2Cache cache;
  std::map<std::string, Mamba2Cache::Snapshot> snapshots;
  std::map<std::string, CacheImage> images;  // the bytes each snapshot must restore
  CacheImage initial;                        // the storage addresses, for life
};

using CacheCommand = rc::state::Command<CacheModel, CacheSut>;

// The cache keeps its storage through every command (captured CUDA graphs stay valid).
void assert_same_storage(const CacheSut& sut, const char* after) {
  for (size_t l = 0; l < sut.cache.ssm_states.size(); ++l) {
    PROP_ASSERT(sut.cache.ssm_states[l].data_ptr() == sut.initial.ssm_ptrs[l] &&
                    sut.cache.conv_states[l].data_ptr() == sut.initial.conv_ptrs[l],
                "after " << after << ": layer " << l << "'s states moved to new storage");
  }
}

struct Forward : CacheCommand {
  int64_t length;
  uint32_t seed;
  explicit Forward(const CacheModel& m)
      : length(*rc::gen::weightedOneOf<int64_t>({{1, rc::gen::just<int64_t>(2)},
                                                  {2, gen_length(m.chunk_size, 2 * m.chunk_size + 2)}})),
        seed(*rc::gen::arbitrary<uint32_t>()) {}
  void apply(CacheModel& m) const override { m.seqlen_offset += length; }
  void run(const CacheModel& m, CacheSut& sut) const override {
    const Branch want = m.seqlen_offset == 0 ? Branch::kPrefill : length == 1 ? Branch::kStep : Branch::kContinue;
    const auto& c = sut.path->config();
    PROP_ASSERT(sut.cache.dispatch(length) == want, "dispatch(" << length << ") at seqlen_offset " << m.seqlen_offset
                                                                << " is " << branch_name(sut.cache.dispatch(length))
                                                                << ", expected " << branch_name(want));
    const ForwardOutput out = sut.path->forward(random_tokens(sut.cache.batch_size(), length, c.vocab_size, seed), sut.cache);
    PROP_ASSERT(static_cast<int64_t>(out.trace.size()) == m.num_layers, "trace has " << out.trace.size() << " records");
    for (int64_t l = 0; l < m.num_layers; ++l) {
      const DispatchRecord want_rec{l, want, logical_kernels(want)};
      PROP_ASSERT(out.trace[static_cast<size_t>(l)] == want_rec,
                  "forward(T=" << length << ") at seqlen_offset " << m.seqlen_offset << ": trace "
                               << trace_string(out.trace) << ", expected " << branch_name(want));
    }
    PROP_ASSERT(sut.cache.seqlen_offset == m.seqlen_offset + length,
                "seqlen_offset " << sut.cache.seqlen_offset << " != " << m.seqlen_offset << " + " << length);
    PROP_ASSERT(out.logits.sizes() == torch::IntArrayRef({sut.cache.batch_size(), length, c.vocab_size}),
                "logits shape " << shape_str(out.logits));
    assert_same_storage(sut, "forward");
  }
  void show(std::ostream& os) const override { os << "forward(T=" << length << ", seed=" << seed << ")"; }
};

struct Step : Forward {
  explicit Step(const CacheModel& m) : Forward(m) { length = 1; }
  void show(std::ostream& os) const override { os << "step(seed=" << seed << ")"; }
};

struct Inject : CacheCommand {
  int64_t layer;
  bool broadcast;
  double scale;
  uint32_t seed;
  explicit Inject(const CacheModel& m)
      : layer(*rc::gen::inRange<int64_t>(0, m.num_layers)),
        broadcast(*rc::gen::arbitrary<bool>()),
        scale(*rc::gen::element(1e-3, 1.0, 10.0)),
        seed(*rc::gen::arbitrary<uint32_t>()) {}
  void run(const CacheModel& m, CacheSut& sut) const override {
    const CacheImage before = image_of(sut.cache);
    const torch::Tensor s0 = sut.cache.ssm_states[static_cast<size_t>(layer)].clone();
    const torch::Tensor delta = random_delta(sut.path->config(), sut.cache.batch_size(), broadcast, scale, seed);
    sut.cache.inject(layer, delta);
    // The state becomes s + Δ exactly as IEEE addition in the state's dtype computes it.
    const torch::Tensor want = s0 + delta.to(s0.scalar_type());
    PROP_ASSERT(bytes_equal(sut.cache.ssm_states[static_cast<size_t>(layer)], want),
                "inject(" << layer << "): ssm_states is not s + delta");
    const CacheImage after = image_of(sut.cache);
    PROP_ASSERT(after.seqlen_offset == m.seqlen_offset, "inject moved seqlen_offset");
    for (size_t l = 0; l < before.ssm_bytes.size(); ++l) {
      PROP_ASSERT(after.conv_bytes[l] == before.conv_bytes[l], "inject changed conv_states[" << l << "]");
      if (static_cast<int64_t>(l) != layer) PROP_ASSERT(after.ssm_bytes[l] == before.ssm_bytes[l], "inject changed layer " << l);
    }
    assert_same_storage(sut, "inject");
  }
  void show(std::ostream& os) const override {
    os << "inject(layer=" << layer << (broadcast ? ", [H,P,N]" : ", [B,H,P,N]") << ", scale=" << scale << ", seed=" << seed
       << ")";
  }
};

struct Snapshot : CacheCommand {
  std::string name;
  explicit Snapshot(const CacheModel&) : name(*rc::gen::element<std::string>("a", "b", "c")) {}
  void apply(CacheModel& m) const override { m.snapshots[name] = m.seqlen_offset; }
  void run(const CacheModel&, CacheSut& sut) const override {
    sut.snapshots[name] = sut.cache.snapshot();
    sut.images[name] = image_of(sut.cache);
  }
  void show(std::ostream& os) const override { os << "snapshot(" << name << ")"; }
};

struct Restore : CacheCommand {
  std::string name;
  explicit Restore(const CacheModel& m) {
    RC_PRE(!m.snapshots.empty());
    std::vector<std::string> names;
    for (const auto& kv : m.snapshots) names.push_back(kv.first);
    name = *rc::gen::elementOf(names);
  }
  void checkPreconditions(const CacheModel& m) const override { RC_PRE(m.snapshots.count(name) > 0); }
  void apply(CacheModel& m) const override { m.seqlen_offset = m.snapshots.at(name); }
  void run(const CacheModel& m, CacheSut& sut) const override {
    sut.cache.restore(sut.snapshots.at(name));
    const std::string diff = image_difference(sut.images.at(name), image_of(sut.cache), /*same_storage=*/true);
    PROP_ASSERT(diff.empty(), "restore(" << name << "): " << diff);
    PROP_ASSERT(sut.cache.seqlen_offset == m.snapshots.at(name), "restore(" << name << "): seqlen_offset");
  }
  void show(std::ostream& os) const override { os << "restore(" << name << ")"; }
};

struct Reset : CacheCommand {
  void apply(CacheModel& m) const override { m.seqlen_offset = 0; }
  void run(const CacheModel&, CacheSut& sut) const override {
    sut.cache.reset();
    PROP_ASSERT(sut.cache.seqlen_offset == 0, "reset left seqlen_offset " << sut.cache.seqlen_offset);
    for (size_t l = 0; l < sut.cache.ssm_states.size(); ++l) {
      PROP_ASSERT(sut.cache.ssm_states[l].eq(0).all().item<bool>() && sut.cache.conv_states[l].eq(0).all().item<bool>(),
                  "reset left non-zero states in layer " << l);
    }
    assert_same_storage(sut, "reset");
  }
  void show(std::ostream& os) const override { os << "reset"; }
};

RC_GTEST_PROP(CacheProperty, StatefulCacheModel, (const ModelSpec& spec)) {
  const int64_t batch = *rc::gen::inRange<int64_t>(1, 3);
  // The reference path (the oracle's float64 cache) mostly; the chunked path's float32 cache too.
  const PathKind kind = *rc::gen::weightedElement<PathKind>({{3, PathKind::kReference}, {1, PathKind::kChunked32}});
  const auto ck = make_checkpoint(spec);
  auto path = build_path(kind, ck);
  CacheSut sut;
  sut.path = path.get();
  sut.cache = path->new_cache(batch);
  sut.initial = image_of(sut.cache);
  CacheModel model;
  model.num_layers = spec.num_layers;
  model.chunk_size = spec.chunk_size;
  // rc::state::check, spelled out so the distribution shows how long the command sequences are.
  const auto commands = *rc::state::gen::commands(
      model, rc::state::gen::execOneOfWithArgs<Forward, Step, Inject, Snapshot, Restore, Reset>());
  RC_TAG(commands.size() < 10 ? "< 10 commands" : commands.size() < 40 ? "10-39 commands" : ">= 40 commands");
  rc::state::runAll(commands, model, sut);
}

}  // namespace
}  // namespace mambadiff::props
