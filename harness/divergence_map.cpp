#include "harness/divergence_map.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "engine/output_file.h"
#include "harness/path_registry.h"
#include "harness/html_page.h"

namespace mambadiff {

namespace {

using html::attr_num;
using html::escape;
using html::num;
using html::ratio;
using html::ratio_colour;

// Above this many token columns the heat map bins consecutive tokens of an op (the cell shows the
// bin's worst): 600 columns at 1.5 px is the width of a laptop screen, and the page stays a few MB
// for a 4096-token prefill of a 24-layer model.
constexpr int64_t kMaxColumns = 600;
// The curves' vertical range, log10(error ÷ tolerance): from 1e-6 of the tolerance (below any honest
// path's noise) to 1e3 or the largest finite ratio drawn, at most 1e12 (inf is drawn at the top).
constexpr double kCurveLogMin = -6.0, kCurveLogTop = 3.0, kCurveLogCeiling = 12.0;

// tab10: one colour per layer in the curves and legends.
const char* layer_colour(int64_t layer) {
  static const char* kPalette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                   "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
  return layer < 0 ? "#000000" : kPalette[layer % 10];
}

std::string shape_of(const torch::Tensor& t) {
  return t.defined() ? fmt::format("[{}]", fmt::join(t.sizes().vec(), ",")) : "-";
}

std::string op_name(const Scenario& s, size_t i) {
  if (i >= s.ops.size()) return fmt::format("op {}", i);
  const ScenarioOp& op = s.ops[i];
  switch (op.kind) {
    case OpKind::kForward:
      return fmt::format("forward [{}x{}]", op.tokens.size(0), op.tokens.dim() > 1 ? op.tokens.size(1) : 1);
    case OpKind::kInject: return fmt::format("inject layer {}", op.layer);
    case OpKind::kSnapshot: return fmt::format("snapshot '{}'", op.name);
    case OpKind::kRestore: return fmt::format("restore '{}'", op.name);
    case OpKind::kReset: return "reset";
  }
  return "?";
}

// The attributes every first-divergence marker carries (see divergence_map.h).
std::string marker_attrs(const Divergence& d) {
  return fmt::format(
      R"(id="first-divergence" data-op="{}" data-row="{}" data-token="{}" data-layer="{}" data-tensor="{}" data-error="{}" data-tolerance="{}" data-ratio="{}")",
      d.op, d.batch, d.token, d.layer, escape(d.tensor), attr_num(d.error), attr_num(d.tolerance),
      attr_num(ratio(d.error, d.tolerance)));
}

struct Builder {
  Builder(const Scenario& s, const CaseRun& r, const DivergenceMapContext& c)
      : scenario(s), run(r), ctx(c), map(map_errors(r.a, r.b, r.reference, r.baselines, r.policy)) {}
  const Scenario& scenario;
  const CaseRun& run;
  const DivergenceMapContext& ctx;
  ErrorMap map;
  const Divergence* first = nullptr;
  bool marker_placed = false;

  // Heat-map geometry: per forward op, its first column and its number of columns.
  int64_t bin = 1;
  std::map<size_t, int64_t> op_first_col, op_tokens;
  int64_t columns = 0;
  int64_t layers = 0;  // layer rows (the logits row comes after them)
  double curve_log_max = kCurveLogTop;

  bool first_is(const std::string& tensor) const { return first && first->tensor == tensor; }

  void layout() {
    int64_t total = 0;
    for (const auto& t : map.tokens)
      if (!op_tokens.count(t.op)) {
        op_tokens[t.op] = t.error.size(1);
        total += t.error.size(1);
      }
    bin = std::max<int64_t>(1, (total + kMaxColumns - 1) / kMaxColumns);
    for (auto& [op, T] : op_tokens) {
      op_first_col[op] = columns;
      columns += (T + bin - 1) / bin;
    }
    for (const auto& t : map.tokens) layers = std::max(layers, t.layer + 1);
    auto widen = [&](double r) {
      if (std::isfinite(r) && r > 0) curve_log_max = std::max(curve_log_max, std::min(kCurveLogCeiling, std::ceil(std::log10(r))));
    };
    for (const auto& t : map.tokens) {
      const torch::Tensor e = t.error.masked_select(torch::isfinite(t.error));
      if (e.numel()) widen(ratio(e.max().item<double>(), t.tolerance));
    }
    for (const auto& r : map.cache)
      for (double e : r.error) widen(ratio(e, r.tolerance));
  }
  int64_t row_of(int64_t layer) const { return layer < 0 ? layers : layer; }

  std::string summary() {
    const Comparison& c = run.comparison;
    std::string s = fmt::format(R"(<h1>{}</h1><p class="sub">{} vs {} · {} · model <code>{}</code> · scenario <code>{}</code></p>)",
                                escape(ctx.title), escape(run.path_a), escape(run.path_b), escape(dtype_string(scenario.dtype)),
                                escape(ctx.model), escape(ctx.scenario));
    const bool marker_here = first && !(first_is("layer_output") || first_is("logits") ||
                                        first_is("cache.ssm_states") || first_is("cache.conv_states") ||
                                        first_is("dispatch_trace") || first_is("cache.seqlen_offset") ||
                                        first_is("cache.shape") || first_is("cache.dtype"));
    // The summary box is the marker itself when the first divergence is nowhere else on the page;
    // otherwise its id is "summary".
    s += fmt::format(R"(<div class="box{}{}" {} data-verdict="{}">)", c.agree ? " agree" : "",
                     marker_here ? " first-divergence" : "", marker_here ? marker_attrs(*first) : "id=\"summary\"",
                     c.agree ? "agree" : "diverge");
    if (marker_here) marker_placed = true;
    double worst_logits = 0;  // over the whole run, as this page draws it
    for (const auto& t : map.tokens) {
      if (t.layer < 0) worst_logits = std::max(worst_logits, ratio(t.error.max().item<double>(), t.tolerance));
    }
    s += fmt::format(
        R"(<b class="verdict-{0}">{1}</b>: logits error {2} against tolerance {3} (error ÷ tolerance {4}; NMSE {5}) as the check compared them, up to the first divergence; over the whole run, the worst logits error ÷ tolerance is <b>{6}</b>.)",
        c.agree ? "agree" : "diverge", c.agree ? "AGREE" : "DIVERGE", num(c.logits_error), num(c.logits_tolerance),
        num(ratio(c.logits_error, c.logits_tolerance)), num(c.logits_nmse), num(worst_logits));
    if (first) {
      s += fmt::format("<br>First divergence (compare_results, in time order): <b>{}</b>", escape(describe(*first)));
      s += R"(<br>Read back from the marked element by this page's script: <span id="js-first-divergence">(script did not run)</span>)";
    }
    for (const auto& n : c.notes) s += "<br><span class=\"note\">note: " + escape(n) + "</span>";
    s += "</div>";
    s += fmt::format(R"(<h2>Reproduce</h2><pre id="command">{}</pre>)", escape(ctx.command));
    s += R"(<p class="note">Error unit: at one (op, batch row, token), max |a − b| over the features divided by the largest |reference| of that op's tensor; the tolerance of a tensor is derived from the plain loops of the run's dtype against the float64 reference (README, Tolerance policy). Every colour and curve is error ÷ tolerance: 1 is the tolerance.</p>)";
    s += "<h2>Ops</h2><table><tr><th>op</th><th>what</th><th>heat-map columns</th></tr>";
    for (size_t i = 0; i < scenario.ops.size(); ++i) {
      std::string cols = "-";
      if (op_first_col.count(i)) {
        const int64_t n = (op_tokens[i] + bin - 1) / bin;
        cols = fmt::format("{} … {}", op_first_col[i], op_first_col[i] + n - 1);
      }
      s += fmt::format("<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>", i, escape(op_name(scenario, i)), cols);
    }
    s += "</table>";
    return s;
  }

  std::string heat_map() {
    std::string s = "<h2>Heat map: error ÷ tolerance per layer × token</h2>";
    if (map.tokens.empty()) return s + "<p>No per-token tensors to draw.</p>";
    s += fmt::format(
        R"(<p class="note">Rows: the residual stream after each layer (layer 0 on top), then the logits. Columns: the tokens of every forward op in time order (op boundaries drawn and labelled){}. Each cell is the worst batch row; its tooltip gives every row. A black outline marks the first divergence.</p>)",
        bin > 1 ? fmt::format("; {} consecutive tokens per column (more than {} tokens in all)", bin, kMaxColumns) : "");
    const double cw = std::clamp(900.0 / double(std::max<int64_t>(columns, 1)), 1.5, 40.0), ch = 22.0;
    const double left = 100, top = 30;
    const double width = left + cw * double(columns) + 20, height = top + ch * double(layers + 1) + 30;
    int64_t cells_over = 0;
    std::string cells;
    for (const auto& t : map.tokens) {
      const int64_t B = t.error.size(0), T = t.error.size(1);
      const auto acc = t.error.accessor<double, 2>();
      const int64_t row = row_of(t.layer);
      for (int64_t c0 = 0; c0 < T; c0 += bin) {
        const int64_t c1 = std::min(T, c0 + bin);
        double worst = 0;
        std::string rows;
        for (int64_t b = 0; b < B; ++b) {
          double wb = 0;
          for (int64_t k = c0; k < c1; ++k) wb = std::isnan(acc[b][k]) || acc[b][k] > wb ? acc[b][k] : wb;
          worst = std::isnan(wb) || wb > worst ? wb : worst;
          rows += fmt::format("{}row {}: {}", b ? ", " : "", b, num(wb));
        }
        const double r = ratio(worst, t.tolerance);
        cells_over += r > 1;
        const double x = left + cw * double(op_first_col[t.op] + c0 / bin), y = top + ch * double(row);
        const std::string where = t.layer < 0 ? "logits" : fmt::format("layer {} output", t.layer);
        const std::string tokens = c1 - c0 > 1 ? fmt::format("tokens {}–{}", c0, c1 - 1) : fmt::format("token {}", c0);
        cells += fmt::format(
            R"(<rect class="cell" x="{:.2f}" y="{:.1f}" width="{:.2f}" height="{:.1f}" fill="{}" data-op="{}" data-token="{}" data-layer="{}" data-ratio="{}"><title>op {}, {} of {}, {}: error {} ÷ tolerance {} = {} ({})</title></rect>)",
            x, y, cw, ch, ratio_colour(r), t.op, c0, t.layer, attr_num(r), t.op, tokens, T, where, num(worst),
            num(t.tolerance), num(r), rows);
        if (first && !marker_placed && (first_is("layer_output") || first_is("logits")) && first->op == t.op &&
            first->layer == t.layer && first->token >= c0 && first->token < c1) {
          cells += fmt::format(
              R"(<rect class="first-divergence" {} x="{:.2f}" y="{:.1f}" width="{:.2f}" height="{:.1f}" fill="none" stroke-width="3"><title>first divergence: {}</title></rect>)",
              marker_attrs(*first), x - 1, y - 1, cw + 2, ch + 2, escape(describe(*first)));
          marker_placed = true;
        }
      }
    }
    s += fmt::format(R"(<svg class="heat" id="heat-map" width="{:.0f}" height="{:.0f}" data-cells-over="{}">)", width,
                     height, cells_over);
    for (int64_t l = 0; l <= layers; ++l) {
      s += fmt::format(R"(<text x="{}" y="{:.1f}" text-anchor="end">{}</text>)", left - 6, top + ch * double(l) + ch * 0.65,
                       l == layers ? "logits" : fmt::format("layer {}", l));
    }
    for (const auto& [op, col] : op_first_col) {
      const double x = left + cw * double(col);
      s += fmt::format(R"(<line class="axis" x1="{0:.2f}" x2="{0:.2f}" y1="{1}" y2="{2:.1f}"/><text x="{3:.2f}" y="{4}">op {5} (T={6})</text>)",
                       x, top - 14, top + ch * double(layers + 1) + 4, x + 2, top - 4, op, op_tokens[op]);
    }
    s += cells;
    // Token ticks under the map: every op's first token, and every 16th token within long ops.
    for (const auto& [op, col] : op_first_col) {
      const int64_t T = op_tokens[op];
      for (int64_t tok = 0; tok < T; tok += std::max<int64_t>(16, bin * 16)) {
        s += fmt::format(R"(<text x="{:.2f}" y="{:.1f}">{}</text>)", left + cw * double(col + tok / bin),
                         top + ch * double(layers + 1) + 14, tok);
      }
    }
    s += "</svg>";
    s += fmt::format(
        R"(<p>{} cell(s) over the tolerance (counted by this page's script from the drawn cells: <span id="js-cells-over">(script did not run)</span>).</p>)",
        cells_over);
    s += html::legend_svg();
    return s;
  }

  double curve_y(double r, double top, double h) const {
    const double l = !std::isfinite(r) ? curve_log_max : (r > 0 ? std::clamp(std::log10(r), kCurveLogMin, curve_log_max) : kCurveLogMin);
    return top + h * (1.0 - (l - kCurveLogMin) / (curve_log_max - kCurveLogMin));
  }

  std::string curve_axes(double left, double top, double w, double h, const std::string& xlabel) const {
    std::string s;
    const int step = curve_log_max - kCurveLogMin > 10 ? 2 : 1;
    for (int e = int(kCurveLogMin); e <= int(curve_log_max); e += step) {
      const double y = curve_y(std::pow(10.0, e), top, h);
      s += fmt::format(R"(<line class="axis" x1="{0}" x2="{1}" y1="{2:.1f}" y2="{2:.1f}" stroke-opacity="0.3"/><text x="{3}" y="{4:.1f}" text-anchor="end">1e{5}</text>)",
                       left, left + w, y, left - 4, y + 4, e);
    }
    s += fmt::format(R"(<line class="guide-tol" x1="{0}" x2="{1}" y1="{2:.1f}" y2="{2:.1f}"/><text x="{1}" y="{3:.1f}" text-anchor="end">tolerance</text>)",
                     left, left + w, curve_y(1.0, top, h), curve_y(1.0, top, h) - 3);
    s += fmt::format(R"(<text x="{:.0f}" y="{:.0f}" text-anchor="middle">{}</text>)", left + w / 2, top + h + 30, escape(xlabel));
    return s;
  }

  std::string residual_curves() {
    std::string s = "<h2>Residual stream: error ÷ tolerance along the tokens, per layer</h2>";
    if (map.tokens.empty() || columns == 0) return s + "<p>No per-token tensors.</p>";
    s += R"(<p class="note">One line per layer (the logits dashed), the worst batch row at each token; the forward ops follow each other left to right as in the heat map.</p>)";
    const double left = 60, top = 10, w = 900, h = 220;
    const double dx = columns > 1 ? w / double(columns - 1) : 0;
    s += fmt::format(R"(<svg id="residual-curves" width="{:.0f}" height="{:.0f}">)", left + w + 90, top + h + 40);
    s += curve_axes(left, top, w, h, "token column (as in the heat map)");
    // (layer, op) -> (x, y) per column: one polyline per layer and op, so the line breaks where the
    // next op starts (its tokens continue another sequence, or the same one after a cache op).
    std::map<std::pair<int64_t, size_t>, std::vector<std::pair<double, double>>> lines;
    for (const auto& t : map.tokens) {
      const auto worst = std::get<0>(t.error.max(0));  // [T]
      const auto acc = worst.accessor<double, 1>();
      for (int64_t c0 = 0; c0 < t.error.size(1); c0 += bin) {
        double wv = 0;
        for (int64_t k = c0; k < std::min(t.error.size(1), c0 + bin); ++k) wv = std::isnan(acc[k]) || acc[k] > wv ? acc[k] : wv;
        lines[{t.layer, t.op}].push_back({left + dx * double(op_first_col[t.op] + c0 / bin), curve_y(ratio(wv, t.tolerance), top, h)});
      }
    }
    std::map<int64_t, bool> in_legend;
    for (const auto& [key, pts] : lines) {
      const int64_t layer = key.first;
      std::string poly;
      for (const auto& [x, y] : pts) poly += fmt::format("{:.1f},{:.1f} ", x, y);
      if (pts.size() == 1) poly += fmt::format("{:.1f},{:.1f} ", pts[0].first + 2, pts[0].second);  // a visible dash
      s += fmt::format(R"(<polyline class="curve" points="{}" stroke="{}"{} data-layer="{}" data-op="{}"><title>{}, op {}</title></polyline>)",
                       poly, layer_colour(layer), layer < 0 ? R"( stroke-dasharray="5 3")" : "", layer, key.second,
                       layer < 0 ? "logits" : fmt::format("layer {} output", layer), key.second);
      if (!in_legend[layer]) {
        in_legend[layer] = true;
        // Legend order: layers from the top, the logits last.
        const double row = double(layer < 0 ? layers : layer);
        s += fmt::format(R"(<text x="{:.0f}" y="{:.0f}" fill="{}">{}</text>)", left + w + 8, top + 12 + 14 * row,
                         layer_colour(layer), layer < 0 ? "logits" : fmt::format("layer {}", layer));
      }
    }
    s += "</svg>";
    return s;
  }

  std::string cache_curves() {
    std::string s = "<h2>Cache: error ÷ tolerance after each op, per layer and batch row</h2>";
    if (map.cache.empty()) return s + "<p>No cache states compared.</p>";
    const bool final_only = map.cache.front().final_cache;
    s += fmt::format(
        R"(<p class="note">{}One line per layer (colour) and batch row (row 0 solid, row 1 dashed, …); hover a point for its numbers.</p>)",
        final_only ? "Only the final cache is available (one side is a file: path, which has no per-op caches). " : "");
    size_t n_ops = 1;
    for (const auto& r : map.cache) n_ops = std::max(n_ops, r.op + 1);
    for (const char* tensor : {"cache.ssm_states", "cache.conv_states"}) {
      const double left = 60, top = 10, w = std::clamp(60.0 * double(n_ops), 200.0, 900.0), h = 160;
      const double dx = n_ops > 1 ? w / double(n_ops - 1) : 0;
      s += fmt::format(R"(<h3>{}</h3><svg class="cache-curves" data-tensor="{}" width="{:.0f}" height="{:.0f}">)", tensor,
                       tensor, left + w + 140, top + h + 40);
      s += curve_axes(left, top, w, h, "after op");
      for (size_t i = 0; i < n_ops; ++i) {
        s += fmt::format(R"(<text x="{:.1f}" y="{:.0f}" text-anchor="middle">{}</text>)", left + dx * double(i), top + h + 14, i);
      }
      std::map<std::pair<int64_t, size_t>, std::vector<std::pair<double, double>>> lines;
      std::string points;
      for (const auto& r : map.cache) {
        if (r.tensor != tensor) continue;
        const size_t xi = final_only ? 0 : r.op;
        for (size_t b = 0; b < r.error.size(); ++b) {
          const double rr = ratio(r.error[b], r.tolerance);
          const double x = left + dx * double(xi), y = curve_y(rr, top, h);
          lines[{r.layer, b}].push_back({x, y});
          const bool mark = first && !marker_placed && first_is(tensor) && first->op == r.op && first->layer == r.layer &&
                            first->batch == static_cast<int64_t>(b);
          const std::string offset =
              r.op < run.a.ops.size() && run.a.ops[r.op].cache.defined() ? fmt::format(", seqlen_offset {}", run.a.ops[r.op].cache.seqlen_offset) : "";
          points += fmt::format(
              R"(<circle cx="{:.1f}" cy="{:.1f}" r="{}" fill="{}"{}><title>after op {} ({}){}: layer {}, row {}: {} error {} ÷ tolerance {} = {}</title></circle>)",
              x, y, mark ? 7 : 3, ratio_colour(rr), mark ? " class=\"first-divergence\" " + marker_attrs(*first) + " stroke-width=\"2\"" : "",
              r.op, escape(op_name(scenario, r.op)), offset, r.layer, b, tensor, num(r.error[b]), num(r.tolerance), num(rr));
          if (mark) marker_placed = true;
        }
      }
      int legend = 0;
      for (const auto& [key, pts] : lines) {
        std::string poly;
        for (const auto& [x, y] : pts) poly += fmt::format("{:.1f},{:.1f} ", x, y);
        s += fmt::format(R"(<polyline class="curve" points="{}" stroke="{}"{}/>)", poly, layer_colour(key.first),
                         key.second ? fmt::format(R"( stroke-dasharray="{} 3")", 2 + 2 * key.second) : "");
        if (legend < 12) {
          s += fmt::format(R"(<text x="{:.0f}" y="{}" fill="{}">layer {} row {}</text>)", left + w + 8, top + 12 + 13 * legend,
                           layer_colour(key.first), key.first, key.second);
        }
        ++legend;
      }
      s += points + "</svg>";
    }
    return s;
  }

  std::string traces() {
    std::string s = "<h2>Dispatch traces side by side</h2>";
    bool any = false;
    std::string rows;
    bool first_mismatch_seen = false;
    for (size_t i = 0; i < std::min(run.a.ops.size(), run.b.ops.size()); ++i) {
      const auto& ta = run.a.ops[i].trace;
      const auto& tb = run.b.ops[i].trace;
      if (ta.empty() && tb.empty()) continue;
      any = true;
      for (size_t l = 0; l < std::max(ta.size(), tb.size()); ++l) {
        auto cell = [](const std::vector<DispatchRecord>& t, size_t k) {
          return k < t.size() ? fmt::format("<b>{}</b> {}", branch_name(t[k].branch), escape(t[k].kernels)) : std::string("(no record)");
        };
        const bool same = l < ta.size() && l < tb.size() && ta[l] == tb[l];
        const bool comparable = !ta.empty() && !tb.empty();
        std::string cls = same || !comparable ? "" : "mismatch";
        std::string attrs;
        if (!same && comparable && !first_mismatch_seen) {
          first_mismatch_seen = true;
          cls += " first-mismatch";
          if (first && !marker_placed && first_is("dispatch_trace") && first->op == i) {
            cls += " first-divergence";
            attrs = " " + marker_attrs(*first);
            marker_placed = true;
          }
        }
        rows += fmt::format(R"(<tr class="{}"{}><td class="num">{}</td><td class="num">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>)",
                            cls, attrs, i, l, cell(ta, l), cell(tb, l), !comparable ? "-" : same ? "same" : "<b>differs</b>");
      }
    }
    if (!any) return s + "<p>Neither side recorded a dispatch trace (a <code>file:</code> path records none).</p>";
    return s + fmt::format("<table id=\"traces\"><tr><th>op</th><th>layer</th><th>{}</th><th>{}</th><th></th></tr>{}</table>",
                           escape(run.path_a), escape(run.path_b), rows);
  }

  std::string cache_attributes() {
    std::string s = "<h2>Cache attributes side by side</h2>";
    std::string rows;
    auto dtype_of = [](const torch::Tensor& t) {
      const auto st = t.scalar_type();
      return st == torch::kFloat32 || st == torch::kFloat64 || st == torch::kBFloat16 || st == torch::kFloat16
                 ? dtype_string(st)
                 : std::string(c10::toString(st));
    };
    auto attrs_of = [&](const torch::Tensor& t) {
      return t.defined() ? fmt::format("{} {} {}", shape_of(t), dtype_of(t), t.device().str()) : std::string("-");
    };
    // What compare_results holds against each other: shapes always; dtypes only when both paths
    // compute in the same dtype and neither is the oracle (float64) or a file; devices never (a GPU
    // path's cache lives on the GPU).
    const bool same_kind = !is_oracle(run.a.path) && !is_oracle(run.b.path) && run.a.dtype == run.b.dtype &&
                           !is_file_path(run.a.path) && !is_file_path(run.b.path);
    auto differs = [&](const torch::Tensor* x, const torch::Tensor* y) {
      if (!x || !y || !x->defined() || !y->defined()) return x != y;
      return x->sizes() != y->sizes() || (same_kind && x->scalar_type() != y->scalar_type());
    };
    auto add_cache = [&](const std::string& label, size_t op, const CacheState& ca, const CacheState& cb) {
      const bool off_same = ca.seqlen_offset == cb.seqlen_offset;
      std::string attrs;
      if (first && !marker_placed && first_is("cache.seqlen_offset") && first->op == op) {
        attrs = " " + marker_attrs(*first) + " class=\"first-divergence mismatch\"";
        marker_placed = true;
      } else if (!off_same) {
        attrs = " class=\"mismatch\"";
      }
      rows += fmt::format(R"(<tr{}><td>{}</td><td>seqlen_offset</td><td class="num">{}</td><td class="num">{}</td></tr>)", attrs,
                          escape(label), ca.seqlen_offset, cb.seqlen_offset);
      for (size_t l = 0; l < std::max(ca.ssm_states.size(), cb.ssm_states.size()); ++l) {
        for (const char* name : {"ssm_states", "conv_states"}) {
          const bool ssm = std::string(name) == "ssm_states";
          const auto& va = ssm ? ca.ssm_states : ca.conv_states;
          const auto& vb = ssm ? cb.ssm_states : cb.conv_states;
          const std::string xa = l < va.size() ? attrs_of(va[l]) : "(none)", xb = l < vb.size() ? attrs_of(vb[l]) : "(none)";
          const bool differ = differs(l < va.size() ? &va[l] : nullptr, l < vb.size() ? &vb[l] : nullptr);
          std::string a2;
          if (first && !marker_placed && (first_is("cache.shape") || first_is("cache.dtype")) && first->op == op &&
              (first->layer == static_cast<int64_t>(l) || first->layer < 0)) {
            a2 = " " + marker_attrs(*first) + " class=\"first-divergence mismatch\"";
            marker_placed = true;
          } else if (differ) {
            a2 = " class=\"mismatch\"";
          }
          rows += fmt::format(R"(<tr{}><td>{}</td><td>{}[{}]</td><td class="mono">{}</td><td class="mono">{}</td></tr>)", a2,
                              escape(label), name, l, escape(xa), escape(xb));
        }
      }
    };
    bool any = false;
    for (size_t i = 0; i < std::min(run.a.ops.size(), run.b.ops.size()); ++i) {
      if (!run.a.ops[i].cache.defined() || !run.b.ops[i].cache.defined()) continue;
      any = true;
      add_cache(fmt::format("after op {} ({})", i, op_name(scenario, i)), i, run.a.ops[i].cache, run.b.ops[i].cache);
    }
    if (!any && run.a.final_cache.defined() && run.b.final_cache.defined()) {
      any = true;
      add_cache("final cache", run.a.ops.empty() ? 0 : run.a.ops.size() - 1, run.a.final_cache, run.b.final_cache);
    }
    if (!any) return s + "<p>No cache on one side.</p>";
    s += R"(<p class="note">Shape, dtype and device of every state tensor. Shaded: what the comparison holds against each other and differs — shapes, and dtypes when both paths compute in the same dtype (the reference computes in float64; a <code>file:</code> side is read back in float32 on the CPU).</p>)";
    return s + fmt::format("<table id=\"cache-attributes\"><tr><th>when</th><th>attribute</th><th>{}</th><th>{}</th></tr>{}</table>",
                           escape(run.path_a), escape(run.path_b), rows);
  }
};

// Reads the marker back into the summary and counts the cells over the tolerance: what the browser
// test reads from the rendered DOM, proving the page was rendered and its numbers are the C++ ones.
constexpr const char* kScript = R"JS(
(function () {
  var m = document.getElementById('first-divergence');
  var out = document.getElementById('js-first-divergence');
  if (m && out) {
    var d = m.dataset, parts = ['op ' + d.op];
    if (Number(d.row) >= 0) parts.push('row ' + d.row);
    if (Number(d.token) >= 0) parts.push('token ' + d.token);
    if (Number(d.layer) >= 0) parts.push('layer ' + d.layer);
    var r = Number(d.ratio);
    out.textContent = parts.join(', ') + ': ' + d.tensor + ' error ÷ tolerance ' +
        (isFinite(r) ? r.toPrecision(3) : String(r));
    out.setAttribute('data-rendered', 'yes');
  }
  var n = 0;
  document.querySelectorAll('#heat-map rect.cell').forEach(function (c) { if (Number(c.dataset.ratio) > 1) n++; });
  var cnt = document.getElementById('js-cells-over');
  if (cnt) cnt.textContent = String(n);
})();
)JS";

}  // namespace

std::string divergence_map_html(const Scenario& scenario, const CaseRun& run, const DivergenceMapContext& ctx) {
  Builder b(scenario, run, ctx);
  if (run.comparison.first_divergence) b.first = &*run.comparison.first_divergence;
  b.layout();
  std::string body = b.summary();
  body += b.heat_map();
  body += b.residual_curves();
  body += b.cache_curves();
  body += b.traces();
  body += b.cache_attributes();
  if (b.first && !b.marker_placed) {
    // Somewhere the page draws nothing of (a tensor left out for its shape): marked in a line here.
    body += fmt::format(R"(<p class="first-divergence" {}>First divergence (not drawn above): {}</p>)",
                        marker_attrs(*b.first), escape(describe(*b.first)));
  }
  for (const auto& n : b.map.notes) body += "<p class=\"note\">" + escape(n) + "</p>";
  body += "<p class=\"note\">Written by mambadiff (harness/divergence_map.h).</p>";
  return html::page(ctx.title, body, kScript);
}

void write_divergence_map(const std::filesystem::path& file, const Scenario& scenario, const CaseRun& run,
                          const DivergenceMapContext& context) {
  write_text_atomically(file, divergence_map_html(scenario, run, context));
}

}  // namespace mambadiff
