// What the three HTML reports share (the divergence map of `diff`/`repro --report`, the suite page
// of `check --report`, the drift page of `trend --report`): one self-contained page (inline CSS,
// inline SVG, a little inline JavaScript; nothing fetched from anywhere), text escaping, number
// formatting, and the log colour scale of error ÷ tolerance.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace mambadiff::html {

// `text` with & < > " ' escaped: safe in element content and in quoted attributes.
std::string escape(std::string_view text);

// A number for people: 3 significant digits; "inf", "-inf", "NaN" for the others.
std::string num(double v);
// A number for data-* attributes that tests and scripts read back: 9 significant digits, and
// "Infinity"/"NaN" as JavaScript's Number() parses them.
std::string attr_num(double v);

// error ÷ tolerance, the one ratio every report shows. A tolerance of 0 (an exact comparison, or the
// oracle against itself) gives 0 when the error is 0 and +inf otherwise; a non-finite error +inf.
double ratio(double error, double tolerance);

// The colour of a ratio on the log scale every report uses (legend_svg draws it): blues far below
// the tolerance (1e-4 and less: darkest), yellow at 0.5 (the drift warning of `trend`), orange-red
// from 1 (the tolerance: a divergence) through dark red (1e3) to dark purple (1e6 and beyond); black
// for inf and NaN.
std::string ratio_colour(double ratio);

// The colour scale as an SVG strip with ticks at 1e-4, 1e-2, 0.5, 1, 100, 1e4, 1e6: `width` px wide.
std::string legend_svg(int width = 560);

// A sparkline of ratios (log scale, one point per value, dashed lines at 0.5 and 1) with a <title>
// tooltip per point naming `labels[i]`: `width` x `height` px.
std::string sparkline_svg(const std::vector<double>& ratios, const std::vector<std::string>& labels, int width,
                          int height);

// A whole HTML document: <head> with `title` and the shared CSS, `body`, then `script` (inline
// JavaScript, run after the body is parsed) when given.
std::string page(const std::string& title, const std::string& body, const std::string& script = "");

}  // namespace mambadiff::html
