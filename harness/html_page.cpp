#include "harness/html_page.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

namespace mambadiff::html {

std::string escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char ch : text) {
    switch (ch) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += ch;
    }
  }
  return out;
}

std::string num(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return fmt::format("{:.3g}", v);
}

std::string attr_num(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  return fmt::format("{:.9g}", v);
}

double ratio(double error, double tolerance) {
  if (!std::isfinite(error)) return std::numeric_limits<double>::infinity();
  if (!(tolerance > 0)) return error == 0 ? 0.0 : std::numeric_limits<double>::infinity();
  return error / tolerance;
}

namespace {

struct Stop {
  double log_ratio;  // log10(error ÷ tolerance)
  std::array<int, 3> rgb;
};
// ColorBrewer's RdYlBu, reversed, with its yellow put at 0.5 (trend's warning line) and its first red
// at 1 (the tolerance), so "close to failing" and "failed" read apart at a glance; above 10 it goes on
// through dark red to dark purple at 1e6, so a bug's spread (1e2 … 1e5 of the tolerance) still shows.
constexpr std::array<Stop, 8> kStops{{{-4.0, {49, 54, 149}},
                                      {-2.0, {69, 117, 180}},
                                      {-1.0, {171, 217, 233}},
                                      {-0.30103, {254, 224, 144}},  // 0.5
                                      {0.0, {244, 109, 67}},        // 1: the tolerance
                                      {1.0, {215, 48, 39}},
                                      {3.0, {153, 0, 13}},
                                      {6.0, {63, 0, 125}}}};

}  // namespace

std::string ratio_colour(double r) {
  if (!std::isfinite(r)) return "#000000";
  const double x = std::clamp(r > 0 ? std::log10(r) : kStops.front().log_ratio, kStops.front().log_ratio,
                              kStops.back().log_ratio);
  size_t i = 0;
  while (i + 2 < kStops.size() && x > kStops[i + 1].log_ratio) ++i;
  const Stop& lo = kStops[i];
  const Stop& hi = kStops[i + 1];
  const double t = std::clamp((x - lo.log_ratio) / (hi.log_ratio - lo.log_ratio), 0.0, 1.0);
  int c[3];
  for (int k = 0; k < 3; ++k) c[k] = static_cast<int>(std::lround(lo.rgb[k] + t * (hi.rgb[k] - lo.rgb[k])));
  return fmt::format("#{:02x}{:02x}{:02x}", c[0], c[1], c[2]);
}

std::string legend_svg(int width) {
  const double lo = kStops.front().log_ratio, hi = kStops.back().log_ratio;
  const int bar_h = 14, pad = 24;
  std::string s = fmt::format(
      R"(<svg class="legend" width="{}" height="44" role="img"><title>error ÷ tolerance, log scale</title><text x="{}" y="15">error ÷ tolerance (1 = the tolerance; black: NaN or inf)</text>)",
      width + 2 * pad + 330, width + 2 * pad);
  const int steps = 60;
  for (int i = 0; i < steps; ++i) {
    const double x = lo + (hi - lo) * (i + 0.5) / steps;
    s += fmt::format(R"(<rect x="{:.1f}" y="4" width="{:.1f}" height="{}" fill="{}"/>)", pad + width * double(i) / steps,
                     width / double(steps) + 0.5, bar_h, ratio_colour(std::pow(10.0, x)));
  }
  for (double tick : {1e-4, 1e-2, 0.5, 1.0, 100.0, 1e4, 1e6}) {
    const double x = pad + width * (std::log10(tick) - lo) / (hi - lo);
    s += fmt::format(R"(<line x1="{0:.1f}" x2="{0:.1f}" y1="2" y2="{1}" stroke="#222"/><text x="{0:.1f}" y="{2}" text-anchor="middle">{3}</text>)",
                     x, bar_h + 8, bar_h + 22, num(tick));
  }
  s += "</svg>";
  return s;
}

std::string sparkline_svg(const std::vector<double>& ratios, const std::vector<std::string>& labels, int width,
                          int height) {
  // Log scale from 0.01 (or half the smallest positive ratio) to 2 (or the largest finite one): the 0.5
  // and 1 lines always show, and a growth of 4x is the same height wherever it happens.
  double lo = 1e-2, hi = 2.0;
  for (double r : ratios) {
    if (r > 0 && std::isfinite(r)) {
      lo = std::min(lo, r / 2);
      hi = std::max(hi, r);
    }
  }
  const double llo = std::log10(lo), lhi = std::log10(hi);
  const int pad = 4;
  auto y_of = [&](double r) {
    const double l = !std::isfinite(r) ? lhi : (r > 0 ? std::log10(r) : llo);
    return pad + (height - 2 * pad) * (1.0 - (l - llo) / (lhi - llo));
  };
  auto x_of = [&](size_t i) {
    return ratios.size() < 2 ? width / 2.0 : pad + (width - 2 * pad) * double(i) / double(ratios.size() - 1);
  };
  std::string s = fmt::format(R"(<svg class="sparkline" width="{}" height="{}">)", width, height);
  for (double guide : {0.5, 1.0}) {
    s += fmt::format(R"(<line x1="0" x2="{}" y1="{:.1f}" y2="{:.1f}" class="{}"/>)", width, y_of(guide), y_of(guide),
                     guide == 1.0 ? "guide-tol" : "guide-warn");
  }
  std::string pts;
  for (size_t i = 0; i < ratios.size(); ++i) pts += fmt::format("{:.1f},{:.1f} ", x_of(i), y_of(ratios[i]));
  s += fmt::format(R"(<polyline points="{}" class="spark"/>)", pts);
  for (size_t i = 0; i < ratios.size(); ++i) {
    s += fmt::format(R"(<circle cx="{:.1f}" cy="{:.1f}" r="2.5" fill="{}"><title>{}: error ÷ tolerance {}</title></circle>)",
                     x_of(i), y_of(ratios[i]), ratio_colour(ratios[i]), escape(i < labels.size() ? labels[i] : ""),
                     num(ratios[i]));
  }
  s += "</svg>";
  return s;
}

std::string page(const std::string& title, const std::string& body, const std::string& script) {
  static const char* kCss = R"(
body { font: 14px/1.4 system-ui, sans-serif; margin: 20px 28px; color: #1a1a1a; background: #fff; }
h1 { font-size: 20px; margin: 0 0 6px; } h2 { font-size: 16px; margin: 26px 0 6px; border-bottom: 1px solid #ddd; }
.sub { color: #555; } code, pre, .mono { font-family: ui-monospace, monospace; font-size: 12.5px; }
pre { background: #f4f4f4; padding: 8px 10px; white-space: pre-wrap; }
table { border-collapse: collapse; margin: 6px 0; } th, td { border: 1px solid #ddd; padding: 2px 7px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } td.num { text-align: right; font-family: ui-monospace, monospace; }
tr.mismatch td { background: #fde0dd; } tr.first-mismatch td, td.first-mismatch { outline: 3px solid #b2182b; }
.verdict-agree { color: #1a7f37; font-weight: 600; } .verdict-diverge, .verdict-error { color: #b2182b; font-weight: 600; }
.verdict-skipped { color: #777; }
.box { border: 1px solid #ccc; border-left: 6px solid #b2182b; padding: 8px 12px; margin: 10px 0; background: #fff7f5; }
.box.agree { border-left-color: #1a7f37; background: #f4fbf5; }
svg text { font: 11px system-ui, sans-serif; fill: #333; } svg .axis { stroke: #999; }
.heat rect.cell:hover { stroke: #000; stroke-width: 1; } rect.first-divergence, circle.first-divergence { stroke: #000; }
.guide-tol { stroke: #b2182b; stroke-dasharray: 4 3; } .guide-warn { stroke: #d9a400; stroke-dasharray: 2 3; }
.spark { fill: none; stroke: #444; stroke-width: 1.3; } .curve { fill: none; stroke-width: 1.6; }
.bar { display: inline-block; width: 160px; height: 12px; background: #eee; position: relative; vertical-align: middle; }
.bar span { position: absolute; left: 0; top: 0; bottom: 0; } .bar i { position: absolute; top: -2px; bottom: -2px; border-left: 2px solid #b2182b; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; } .card { border: 1px solid #ddd; padding: 6px 8px; width: 250px; font-size: 12px; }
.card.flagged { border: 2px solid #b2182b; background: #fff7f5; } .card .id { font-family: ui-monospace, monospace; word-break: break-all; }
.hidden { display: none; } .note { color: #555; font-size: 12.5px; }
)";
  return fmt::format(
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n"
      "<meta name=\"generator\" content=\"mambadiff\">\n<style>{}</style></head>\n<body>\n{}\n{}</body></html>\n",
      escape(title), kCss, body, script.empty() ? "" : "<script>\n" + script + "\n</script>\n");
}

}  // namespace mambadiff::html
