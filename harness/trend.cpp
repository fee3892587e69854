#include "harness/trend.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "harness/html_page.h"

namespace mambadiff {

size_t TrendReport::flagged() const {
  return static_cast<size_t>(std::count_if(cases.begin(), cases.end(), [](const CaseTrend& c) { return c.flagged; }));
}

namespace {

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string short_commit(const std::string& c) { return c.size() > 12 ? c.substr(0, 12) : c; }

// A text sparkline of log ratios: ▁ at 1e-4 of the tolerance or less, █ at the tolerance or more.
std::string text_sparkline(const std::vector<double>& ratios) {
  static const char* kBars[] = {"▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"};
  std::string s;
  for (double r : ratios) {
    const double l = !std::isfinite(r) ? 0.0 : (r > 0 ? std::clamp(std::log10(r), -4.0, 0.0) : -4.0);
    s += kBars[std::clamp(static_cast<int>(std::lround((l + 4.0) / 4.0 * 7.0)), 0, 7)];
  }
  return s;
}

}  // namespace

TrendReport analyse_trend(const std::vector<HistoryRecord>& records, const std::string& source) {
  TrendReport rep;
  rep.source = source;
  rep.records = records.size();
  std::map<std::string, size_t> index;
  for (const auto& r : records) {
    if (std::find(rep.commits.begin(), rep.commits.end(), r.commit) == rep.commits.end()) rep.commits.push_back(r.commit);
    auto [it, fresh] = index.emplace(r.case_id, rep.cases.size());
    if (fresh) rep.cases.push_back(CaseTrend{r.case_id, {}, {}, {}, {}, 0.0, 0.0, false, ""});
    CaseTrend& c = rep.cases[it->second];
    c.ratios.push_back(html::ratio(r.error, r.tolerance));
    c.commits.push_back(r.commit);
    c.dates.push_back(r.date);
    c.verdicts.push_back(r.verdict);
  }
  for (auto& c : rep.cases) {
    c.latest = c.ratios.back();
    c.median_before = median(std::vector<double>(c.ratios.begin(), c.ratios.end() - 1));
    if (c.latest >= kWarnRatio) {
      c.flagged = true;
      c.why = fmt::format("at {} of its tolerance (flagged from {}){}", html::num(c.latest), kWarnRatio,
                          c.verdicts.back() == "diverge" ? ": it diverged" : "");
    } else if (c.ratios.size() > 1 && c.median_before > 0 && c.latest >= kGrowthFactor * c.median_before) {
      c.flagged = true;
      c.why = fmt::format("grew {}x against the median {} of its {} earlier record(s) (flagged from {}x)",
                          html::num(c.latest / c.median_before), html::num(c.median_before), c.ratios.size() - 1,
                          kGrowthFactor);
    }
  }
  std::stable_partition(rep.cases.begin(), rep.cases.end(), [](const CaseTrend& c) { return c.flagged; });
  return rep;
}

std::string trend_table(const TrendReport& rep) {
  size_t width = 4;
  for (const auto& c : rep.cases) width = std::max(width, c.case_id.size());
  std::string s = fmt::format("{:<{}} {:>7} {:>10} {:>10}  {:<12} {}\n", "case", width, "records", "median", "latest",
                              "trend", "flag");
  for (const auto& c : rep.cases) {
    s += fmt::format("{:<{}} {:>7} {:>10} {:>10}  {:<12} {}\n", c.case_id, width, c.ratios.size(),
                     c.ratios.size() > 1 ? html::num(c.median_before) : "-", html::num(c.latest), text_sparkline(c.ratios),
                     c.flagged ? "WARN: " + c.why : "ok");
  }
  s += fmt::format("trend: {} case(s) over {} commit(s) ({} records) in {}: {} flagged "
                   "(error ÷ tolerance >= {} or >= {}x its earlier median)\n",
                   rep.cases.size(), rep.commits.size(), rep.records, rep.source, rep.flagged(), kWarnRatio,
                   kGrowthFactor);
  return s;
}

std::string trend_html(const TrendReport& rep) {
  using html::escape;
  std::string b = fmt::format("<h1>Error drift: {}</h1>", escape(rep.source));
  b += fmt::format(
      R"(<div class="box{}" id="summary" data-flagged="{}" data-cases="{}" data-commits="{}"><b>{} of {} case(s) flagged</b> over {} commit(s), {} records (counted by this page's script: <span id="js-flagged-count">(script did not run)</span>). A case is flagged when its latest error ÷ tolerance is {} or more, or {}× or more the median of its earlier records.</div>)",
      rep.flagged() ? "" : " agree", rep.flagged(), rep.cases.size(), rep.commits.size(), rep.flagged(),
      rep.cases.size(), rep.commits.size(), rep.records, kWarnRatio, kGrowthFactor);
  b += "<h2>Commits</h2><table><tr><th>#</th><th>commit</th></tr>";
  for (size_t i = 0; i < rep.commits.size(); ++i)
    b += fmt::format("<tr><td class=\"num\">{}</td><td class=\"mono\">{}</td></tr>", i, escape(rep.commits[i]));
  b += "</table>";
  b += R"(<h2>Cases</h2><p class="note"><label><input type="checkbox" id="only-flagged"> only the flagged cases</label> (or open this page with <code>#flagged</code>). Each sparkline: error ÷ tolerance per record, log scale; dashed lines at 0.5 (yellow) and 1, the tolerance (red).</p><div class="cards">)";
  for (const auto& c : rep.cases) {
    std::vector<std::string> labels;
    for (size_t i = 0; i < c.ratios.size(); ++i)
      labels.push_back(fmt::format("{} ({}, {})", short_commit(c.commits[i]), c.dates[i], c.verdicts[i]));
    b += fmt::format(
        R"(<div class="card{}" data-case="{}" data-flagged="{}" data-latest-ratio="{}" data-records="{}"><div class="id">{}</div>{}<div>latest <b>{}</b>{}</div>{}</div>)",
        c.flagged ? " flagged" : "", escape(c.case_id), c.flagged ? "true" : "false", html::attr_num(c.latest),
        c.ratios.size(), escape(c.case_id), html::sparkline_svg(c.ratios, labels, 230, 70), html::num(c.latest),
        c.ratios.size() > 1 ? fmt::format(" · median before {}", html::num(c.median_before)) : "",
        c.flagged ? "<div class=\"verdict-diverge\">" + escape(c.why) + "</div>" : "");
  }
  b += "</div>";
  b += html::legend_svg();
  const char* script = R"JS(
(function () {
  var cards = document.querySelectorAll('.card');
  var flagged = 0;
  cards.forEach(function (c) { if (c.dataset.flagged === 'true') flagged++; });
  document.getElementById('js-flagged-count').textContent = String(flagged);
  var box = document.getElementById('only-flagged');
  function apply() {
    cards.forEach(function (c) { c.classList.toggle('hidden', box.checked && c.dataset.flagged !== 'true'); });
  }
  if (location.hash === '#flagged') box.checked = true;
  box.addEventListener('change', apply);
  apply();
})();
)JS";
  return html::page("mambadiff trend: " + rep.source, b, script);
}

}  // namespace mambadiff
