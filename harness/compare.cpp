#include "harness/compare.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "harness/path_registry.h"

namespace mambadiff {

double TolerancePolicy::floor(const std::string& dtype) const {
  if (dtype == "bfloat16") return floor_bfloat16;
  if (dtype == "float16") return floor_float16;
  if (dtype == "float64") return 0.0;
  return floor_float32;
}

double TolerancePolicy::stochastic(const std::string& dtype) const {
  if (dtype == "bfloat16") return stochastic_multiplier_bfloat16;
  if (dtype == "float16") return stochastic_multiplier_float16;
  return stochastic_multiplier;
}

double ErrorBaseline::at(const std::string& key) const {
  auto it = error.find(key);
  return it == error.end() ? 0.0 : it->second;
}

double ErrorBaseline::stochastic_at(const std::string& key) const {
  auto it = stochastic_error.find(key);
  return it == stochastic_error.end() ? 0.0 : it->second;
}

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// The element loops below run over every element of every compared tensor; in the libFuzzer build
// SanitizerCoverage would trace each of their loop-counter and pointer comparisons (fuzz mode:
// __sanitizer_cov_trace_*cmp8 were 16 % of scan_diff's samples, 2026-12-02) for no coverage worth
// having -- they branch only on "finite or not". They stay under ASan and UBSan like all our code.
#if defined(__clang__)
#define MAMBADIFF_NO_COVERAGE __attribute__((no_sanitize("coverage")))
#else
#define MAMBADIFF_NO_COVERAGE
#endif

// A tensor's elements read as float64: in place when it is a contiguous float32 or float64 CPU
// tensor (what every path returns; the widening is exact, so the values are those of a float64
// copy), else from a float64 copy. Comparing is per tensor of every op of every compared pair, and
// on the fuzz targets' tiny tensors each ATen op (a conversion, a mask, a reduction) cost more than
// the arithmetic: these loops replaced ~20 ops per tensor with none.
class Float64Elements {
 public:
  explicit Float64Elements(const torch::Tensor& t)
      : held_(t.device().is_cpu() && t.is_contiguous() &&
                      (t.scalar_type() == torch::kFloat32 || t.scalar_type() == torch::kFloat64)
                  ? t
                  : t.to(torch::kCPU, torch::kFloat64).contiguous()),
        f32_(held_.scalar_type() == torch::kFloat32 ? held_.data_ptr<float>() : nullptr),
        f64_(f32_ ? nullptr : held_.data_ptr<double>()) {}
  MAMBADIFF_NO_COVERAGE double operator[](int64_t i) const { return f32_ ? static_cast<double>(f32_[i]) : f64_[i]; }
  int64_t numel() const { return held_.numel(); }
  torch::IntArrayRef sizes() const { return held_.sizes(); }

 private:
  torch::Tensor held_;
  const float* f32_;
  const double* f64_;
};

// max |reference| over its finite elements (1 where that is 0 or there are none).
MAMBADIFF_NO_COVERAGE double scale_of(const Float64Elements& r) {
  double s = 0.0;
  for (int64_t i = 0; i < r.numel(); ++i) {
    const double v = std::abs(r[i]);
    if (std::isfinite(v) && v > s) s = v;
  }
  return s > 0 ? s : 1.0;
}

// The element errors |a - b| / scale, scale = scale_of(reference), +inf wherever a, b or the
// reference holds NaN or an infinity (NaN == NaN must never "agree", nor inf - inf be excused),
// reduced to their maximum over each of `groups` consecutive runs of elements: a and b viewed as
// [groups, numel / groups] in row-major order (groups = B * T for a per-token tensor [B, T, ...],
// B for a per-row one, 1 for the whole tensor). Returns [groups].
MAMBADIFF_NO_COVERAGE std::vector<double> max_errors(const torch::Tensor& a_in, const torch::Tensor& b_in,
                                                     const torch::Tensor& ref_in, int64_t groups) {
  const Float64Elements a(a_in), b(b_in), ref(ref_in);
  const double scale = scale_of(ref);
  std::vector<double> worst(static_cast<size_t>(groups), 0.0);
  if (groups == 0) return worst;
  if (a.sizes() != b.sizes()) {  // broadcast (never between two results of one scenario): ATen's ops
    const torch::Tensor ta = a_in.to(torch::kCPU, torch::kFloat64), tb = b_in.to(torch::kCPU, torch::kFloat64);
    const torch::Tensor err = (ta - tb).abs() / scale;
    const torch::Tensor bad = ~torch::isfinite(ta) | ~torch::isfinite(tb) |
                              ~torch::isfinite(ref_in.to(torch::kCPU, torch::kFloat64)).all();
    const torch::Tensor per_group = std::get<0>(err.masked_fill(bad, kInf).reshape({groups, -1}).max(1)).contiguous();
    std::copy(per_group.data_ptr<double>(), per_group.data_ptr<double>() + groups, worst.begin());
    return worst;
  }
  const int64_t per = a.numel() / groups;
  TORCH_CHECK(per > 0 && per * groups == a.numel(), "compare: a tensor of ", a.numel(),
              " elements cannot be split into ", groups, " non-empty rows");
  // The reference normally has a's shape; a `file:` result of another shape is caught by the shape
  // checks, and then any non-finite reference value poisons the whole tensor.
  const bool ref_elementwise = ref.sizes() == a.sizes();
  bool ref_any_bad = false;
  if (!ref_elementwise) {
    for (int64_t i = 0; i < ref.numel(); ++i) ref_any_bad = ref_any_bad || !std::isfinite(ref[i]);
  }
  for (int64_t g = 0; g < groups; ++g) {
    double m = -kInf;
    for (int64_t i = g * per; i < (g + 1) * per; ++i) {
      const double x = a[i], y = b[i];
      const bool bad =
          !std::isfinite(x) || !std::isfinite(y) || (ref_elementwise ? !std::isfinite(ref[i]) : ref_any_bad);
      m = std::max(m, bad ? kInf : std::abs(x - y) / scale);
    }
    worst[static_cast<size_t>(g)] = m;
  }
  return worst;
}

double nmse(const torch::Tensor& a_in, const torch::Tensor& b_in) {
  const torch::Tensor a = a_in.to(torch::kCPU, torch::kFloat64), b = b_in.to(torch::kCPU, torch::kFloat64);
  const double den = b.pow(2).sum().item<double>();
  const double num = (a - b).pow(2).sum().item<double>();
  return den > 0 ? num / den : num;
}

struct Checker {
  const ScenarioResult& a;
  const ScenarioResult& b;
  const std::vector<ErrorBaseline>& baselines;
  const TolerancePolicy& policy;
  Comparison& out;

  double path_tolerance(const std::string& path, const std::string& dtype, const std::string& key) const {
    if (is_oracle(path)) return 0.0;
    for (const auto& bl : baselines)
      if (bl.dtype == dtype) {
        const double plain = policy.multiplier * bl.at(key);
        const double stochastic = policy.stochastic(dtype) * bl.stochastic_at(key);
        // NaN in either (loops that computed NaN) must stay NaN: no tolerance can be derived.
        if (std::isnan(plain) || std::isnan(stochastic)) return std::numeric_limits<double>::quiet_NaN();
        return std::max(plain, stochastic) + policy.floor(dtype);
      }
    return policy.floor(dtype);
  }
  double tolerance(const std::string& key) const {
    return path_tolerance(a.path, a.dtype, key) + path_tolerance(b.path, b.dtype, key);
  }

  bool fail(Divergence d) {
    out.agree = false;
    if (!out.first_divergence) out.first_divergence = std::move(d);
    return false;
  }

  // The baseline (plain loops vs reference) is itself NaN or infinite: no tolerance can be derived,
  // and `inf > inf` is false, so using it would let anything pass.
  bool fail_tolerance(size_t op, int64_t layer, const std::string& tensor, double tol) {
    return fail({op, -1, -1, layer, tensor, kInf, tol,
                 "tolerance not finite: the plain loops computed NaN or an infinity here"});
  }

  // Per-token tensors [B, T, F]: the first (token, row) in time order whose error exceeds tol.
  bool check_tokens(size_t op, int64_t layer, const std::string& tensor, const std::string& key,
                    const torch::Tensor& ta, const torch::Tensor& tb, const torch::Tensor& tref) {
    if (ta.sizes() != tb.sizes()) {
      return fail({op, -1, -1, layer, tensor, kInf, 0.0,
                   fmt::format("shape [{}] vs [{}]", fmt::join(ta.sizes().vec(), ","), fmt::join(tb.sizes().vec(), ","))});
    }
    const double tol = tolerance(key);
    if (!std::isfinite(tol)) return fail_tolerance(op, layer, tensor, tol);
    const int64_t B = ta.size(0), T = ta.size(1);
    const std::vector<double> per_token = max_errors(ta, tb, tref, B * T);  // [B, T]
    if (tensor == "logits") {
      const double worst = *std::max_element(per_token.begin(), per_token.end());
      const double n = nmse(ta, tb);
      if (worst / std::max(tol, 1e-300) >= out.logits_error / std::max(out.logits_tolerance, 1e-300)) {
        out.logits_error = worst;
        out.logits_tolerance = tol;
      }
      out.logits_nmse = std::max(out.logits_nmse, n);
    }
    for (int64_t t = 0; t < T; ++t) {  // time order first
      for (int64_t row = 0; row < B; ++row) {
        const double e = per_token[static_cast<size_t>(row * T + t)];
        if (e > tol) return fail({op, row, t, layer, tensor, e, tol, ""});
      }
    }
    return true;
  }

  // Per-row tensors [B, ...] (cache states).
  bool check_rows(size_t op, int64_t layer, const std::string& tensor, const std::string& key,
                  const torch::Tensor& ta, const torch::Tensor& tb, const torch::Tensor& tref) {
    if (ta.sizes() != tb.sizes()) {
      return fail({op, -1, -1, layer, "cache.shape", kInf, 0.0,
                   fmt::format("{} [{}] vs [{}]", tensor, fmt::join(ta.sizes().vec(), ","), fmt::join(tb.sizes().vec(), ","))});
    }
    const double tol = tolerance(key);
    if (!std::isfinite(tol)) return fail_tolerance(op, layer, tensor, tol);
    const std::vector<double> per_row = max_errors(ta, tb, tref, ta.size(0));  // [B]
    for (size_t row = 0; row < per_row.size(); ++row) {
      if (per_row[row] > tol) return fail({op, static_cast<int64_t>(row), -1, layer, tensor, per_row[row], tol, ""});
    }
    return true;
  }

  bool check_cache(size_t op, const CacheState& ca, const CacheState& cb, const CacheState& cref) {
    if (ca.seqlen_offset != cb.seqlen_offset) {
      return fail({op, -1, -1, -1, "cache.seqlen_offset", std::fabs(double(ca.seqlen_offset - cb.seqlen_offset)), 0.0,
                   fmt::format("{} vs {}", ca.seqlen_offset, cb.seqlen_offset)});
    }
    if (ca.ssm_states.size() != cb.ssm_states.size()) {
      return fail({op, -1, -1, -1, "cache.shape", kInf, 0.0,
                   fmt::format("{} vs {} layers", ca.ssm_states.size(), cb.ssm_states.size())});
    }
    const bool same_kind = !is_oracle(a.path) && !is_oracle(b.path) && a.dtype == b.dtype &&
                           !is_file_path(a.path) && !is_file_path(b.path);
    for (size_t l = 0; l < ca.ssm_states.size(); ++l) {
      const auto L = static_cast<int64_t>(l);
      if (same_kind && (ca.ssm_states[l].scalar_type() != cb.ssm_states[l].scalar_type() ||
                        ca.conv_states[l].scalar_type() != cb.conv_states[l].scalar_type())) {
        return fail({op, -1, -1, L, "cache.dtype", kInf, 0.0,
                     fmt::format("ssm {} vs {}, conv {} vs {}", c10::toString(ca.ssm_states[l].scalar_type()),
                                 c10::toString(cb.ssm_states[l].scalar_type()),
                                 c10::toString(ca.conv_states[l].scalar_type()),
                                 c10::toString(cb.conv_states[l].scalar_type()))});
      }
      if (!check_rows(op, L, "cache.ssm_states", fmt::format("op{}.cache.ssm_states.{}", op, l), ca.ssm_states[l],
                      cb.ssm_states[l], cref.ssm_states[l]))
        return false;
      if (!check_rows(op, L, "cache.conv_states", fmt::format("op{}.cache.conv_states.{}", op, l), ca.conv_states[l],
                      cb.conv_states[l], cref.conv_states[l]))
        return false;
    }
    return true;
  }

};

}  // namespace

ErrorBaseline measure_baseline(const ScenarioResult& plain, const ScenarioResult& ref) {
  ErrorBaseline bl;
  bl.dtype = plain.dtype;
  auto put = [&](const std::string& key, const torch::Tensor& x, const torch::Tensor& r) {
    bl.error[key] = max_errors(x, r, r, 1).front();
  };
  for (size_t i = 0; i < plain.ops.size() && i < ref.ops.size(); ++i) {
    const auto& p = plain.ops[i];
    const auto& r = ref.ops[i];
    if (p.kind == OpKind::kForward) {
      put(fmt::format("op{}.logits", i), p.logits, r.logits);
      for (size_t l = 0; l < p.layer_outputs.size(); ++l) {
        put(fmt::format("op{}.layer{}", i, l), p.layer_outputs[l], r.layer_outputs[l]);
      }
    }
    for (size_t l = 0; l < p.cache.ssm_states.size(); ++l) {
      put(fmt::format("op{}.cache.ssm_states.{}", i, l), p.cache.ssm_states[l], r.cache.ssm_states[l]);
      put(fmt::format("op{}.cache.conv_states.{}", i, l), p.cache.conv_states[l], r.cache.conv_states[l]);
    }
  }
  return bl;
}

Comparison compare_results(const ScenarioResult& a, const ScenarioResult& b, const ScenarioResult& ref,
                           const std::vector<ErrorBaseline>& baselines, const TolerancePolicy& policy) {
  Comparison out;
  out.path_a = a.path;
  out.path_b = b.path;
  Checker ck{a, b, baselines, policy, out};
  if (a.ops.size() != b.ops.size() || a.ops.size() != ref.ops.size() || a.ops.empty()) {
    // Nothing compared is no agreement: a `file:` result of another scenario, or no ops at all.
    ck.fail({0, -1, -1, -1, "ops", kInf, 0.0,
             fmt::format("{} ops vs {} ops (reference {})", a.ops.size(), b.ops.size(), ref.ops.size())});
    return out;
  }
  const size_t n = a.ops.size();
  bool ok = true;
  for (size_t i = 0; i < n && ok; ++i) {
    const OpResult& oa = a.ops[i];
    const OpResult& ob = b.ops[i];
    const OpResult& orf = ref.ops[i];
    if (oa.kind == OpKind::kForward) {
      if (!oa.trace.empty() && !ob.trace.empty() && !(oa.trace == ob.trace)) {
        for (size_t l = 0; l < std::min(oa.trace.size(), ob.trace.size()); ++l) {
          if (!(oa.trace[l] == ob.trace[l])) {
            ok = ck.fail({i, -1, -1, static_cast<int64_t>(l), "dispatch_trace", kInf, 0.0,
                          fmt::format("{} {} vs {} {}", branch_name(oa.trace[l].branch), oa.trace[l].kernels,
                                      branch_name(ob.trace[l].branch), ob.trace[l].kernels)});
            break;
          }
        }
        if (ok) ok = ck.fail({i, -1, -1, -1, "dispatch_trace", kInf, 0.0, "different number of layers traced"});
        if (!ok) break;
      }
      const size_t layers = std::min(oa.layer_outputs.size(), ob.layer_outputs.size());
      for (size_t l = 0; l < layers && ok; ++l) {
        ok = ck.check_tokens(i, static_cast<int64_t>(l), "layer_output", fmt::format("op{}.layer{}", i, l),
                             oa.layer_outputs[l], ob.layer_outputs[l], orf.layer_outputs[l]);
      }
      if (ok) ok = ck.check_tokens(i, -1, "logits", fmt::format("op{}.logits", i), oa.logits, ob.logits, orf.logits);
    }
    if (ok && oa.cache.defined() && ob.cache.defined()) ok = ck.check_cache(i, oa.cache, ob.cache, orf.cache);
  }
  if (ok && a.final_cache.defined() && b.final_cache.defined() && n > 0) {
    ck.check_cache(n - 1, a.final_cache, b.final_cache, ref.final_cache);
  }
  if (a.ops.front().layer_outputs.empty() || b.ops.front().layer_outputs.empty()) {  // n > 0: checked above
    out.notes.push_back("per-layer outputs not available on one side: logits and final cache compared");
  }
  return out;
}

ErrorMap map_errors(const ScenarioResult& a, const ScenarioResult& b, const ScenarioResult& ref,
                    const std::vector<ErrorBaseline>& baselines, const TolerancePolicy& policy) {
  ErrorMap map;
  Comparison unused;  // Checker's tolerance(): the same tolerance per tensor as compare_results
  const Checker ck{a, b, baselines, policy, unused};
  auto same_shapes = [&](const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& r, const std::string& what) {
    if (x.defined() && y.defined() && r.defined() && x.sizes() == y.sizes() && r.sizes() == x.sizes()) return true;
    map.notes.push_back(fmt::format("{}: not drawn (shapes differ or a side lacks it)", what));
    return false;
  };
  auto cache_rows = [&](size_t op, const CacheState& ca, const CacheState& cb, const CacheState& cr, bool final_cache) {
    const size_t layers = std::min({ca.ssm_states.size(), cb.ssm_states.size(), cr.ssm_states.size()});
    for (size_t l = 0; l < layers; ++l) {
      for (const char* name : {"ssm_states", "conv_states"}) {
        const bool ssm = std::string(name) == "ssm_states";
        const torch::Tensor& ta = ssm ? ca.ssm_states[l] : ca.conv_states[l];
        const torch::Tensor& tb = ssm ? cb.ssm_states[l] : cb.conv_states[l];
        const torch::Tensor& tr = ssm ? cr.ssm_states[l] : cr.conv_states[l];
        const std::string tensor = fmt::format("cache.{}", name);
        if (!same_shapes(ta, tb, tr, fmt::format("op {} {} layer {}", op, tensor, l))) continue;
        RowErrors r;
        r.op = op;
        r.layer = static_cast<int64_t>(l);
        r.tensor = tensor;
        r.error = max_errors(ta, tb, tr, ta.size(0));  // [B]
        r.tolerance = ck.tolerance(fmt::format("op{}.{}.{}", op, tensor, l));
        r.final_cache = final_cache;
        map.cache.push_back(std::move(r));
      }
    }
  };
  const size_t n = std::min({a.ops.size(), b.ops.size(), ref.ops.size()});
  bool per_op_cache = false;
  for (size_t i = 0; i < n; ++i) {
    const OpResult& oa = a.ops[i];
    const OpResult& ob = b.ops[i];
    const OpResult& orf = ref.ops[i];
    if (oa.kind == OpKind::kForward) {
      auto add = [&](int64_t layer, const std::string& tensor, const std::string& key, const torch::Tensor& ta,
                     const torch::Tensor& tb, const torch::Tensor& tr) {
        if (!same_shapes(ta, tb, tr, fmt::format("op {} {}{}", i, tensor, layer >= 0 ? fmt::format(" layer {}", layer) : "")))
          return;
        TokenErrors t;
        t.op = i;
        t.layer = layer;
        t.tensor = tensor;
        const int64_t B = ta.size(0), T = ta.size(1);
        t.error = torch::tensor(max_errors(ta, tb, tr, B * T), torch::kFloat64).view({B, T});  // [B, T]
        t.tolerance = ck.tolerance(key);
        map.tokens.push_back(std::move(t));
      };
      const size_t layers = std::min({oa.layer_outputs.size(), ob.layer_outputs.size(), orf.layer_outputs.size()});
      for (size_t l = 0; l < layers; ++l) {
        add(static_cast<int64_t>(l), "layer_output", fmt::format("op{}.layer{}", i, l), oa.layer_outputs[l],
            ob.layer_outputs[l], orf.layer_outputs[l]);
      }
      add(-1, "logits", fmt::format("op{}.logits", i), oa.logits, ob.logits, orf.logits);
    }
    if (oa.cache.defined() && ob.cache.defined() && orf.cache.defined()) {
      cache_rows(i, oa.cache, ob.cache, orf.cache, false);
      per_op_cache = true;
    }
  }
  if (!per_op_cache && n > 0 && a.final_cache.defined() && b.final_cache.defined() && ref.final_cache.defined()) {
    cache_rows(n - 1, a.final_cache, b.final_cache, ref.final_cache, true);
  }
  return map;
}

std::string describe(const Divergence& d) {
  std::string where = fmt::format("op {}", d.op);
  if (d.batch >= 0) where += fmt::format(", row {}", d.batch);
  if (d.token >= 0) where += fmt::format(", token {}", d.token);
  if (d.layer >= 0) where += fmt::format(", layer {}", d.layer);
  std::string s = fmt::format("{}: {} error {:.3g} > tolerance {:.3g}", where, d.tensor, d.error, d.tolerance);
  if (!d.detail.empty()) s += " (" + d.detail + ")";
  return s;
}

}  // namespace mambadiff
