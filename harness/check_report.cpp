#include "harness/check_report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "engine/output_file.h"
#include "harness/html_page.h"

namespace mambadiff {

namespace fs = std::filesystem;

fs::path check_report_maps_dir(const fs::path& report_file) {
  return report_file.parent_path() / (report_file.stem().string() + ".cases");
}

namespace {

// The bar: error ÷ tolerance on a log scale from 1e-4 (empty) to 100 (full), a red tick at 1.
constexpr double kBarLogMin = -4.0, kBarLogMax = 2.0;

double bar_fraction(double r) {
  if (!std::isfinite(r)) return 1.0;
  const double l = r > 0 ? std::log10(r) : kBarLogMin;
  return std::clamp((l - kBarLogMin) / (kBarLogMax - kBarLogMin), 0.0, 1.0);
}

}  // namespace

std::string check_report_html(const CheckReport& report, const fs::path& report_file, uint64_t seed,
                              const std::string& commit) {
  using html::escape;
  using html::num;
  size_t counts[4] = {0, 0, 0, 0};
  std::set<std::string> models;
  for (const auto& c : report.cases) {
    models.insert(c.model);
    counts[0] += c.verdict == "agree";
    counts[1] += c.verdict == "diverge";
    counts[2] += c.verdict == "error";
    counts[3] += c.verdict == "skipped";
  }
  const bool pass = report.all_agree();
  std::string b = "<h1>mambadiff check</h1>";
  b += fmt::format(
      R"(<div class="box{}" id="summary" data-cases="{}" data-agree="{}" data-diverge="{}" data-error="{}" data-skipped="{}"><b class="verdict-{}">{}</b>: {} cases: {} agree, {} diverge, {} error, {} skipped, in {:.1f} s · base seed {} · commit <code>{}</code><br>Shown by the filters (counted by this page's script): <span id="js-shown">(script did not run)</span></div>)",
      pass ? " agree" : "", report.cases.size(), counts[0], counts[1], counts[2], counts[3], pass ? "agree" : "diverge",
      pass ? "PASS" : "FAIL", report.cases.size(), counts[0], counts[1], counts[2], counts[3], report.seconds, seed,
      escape(commit));
  b += fmt::format(R"(<p>Replay: <code>mambadiff check --seed {}</code> (with the same --model and --paths).</p>)", seed);
  b += R"(<p>Verdict <select id="filter-verdict"><option value="">all</option><option>agree</option><option>diverge</option><option>error</option><option>skipped</option></select> Model <select id="filter-model"><option value="">all</option>)";
  for (const auto& m : models) b += fmt::format("<option>{}</option>", escape(m));
  b += R"(</select> <span class="note">(also from the address: #verdict=diverge&amp;model=tiny)</span></p>)";
  b += R"(<p class="note">error and tolerance: the logits' worst error ÷ tolerance over the case's forward ops (the one the table prints); a case diverges where ANY tensor first exceeds its tolerance — layer outputs, logits, cache, dispatch — so a diverging case's logits bar may still be short: its detail says where it parted. Bar: log scale from 1e-4 to 100, the red tick at 1 (the tolerance).</p>)";
  b += "<table id=\"cases\"><tr><th>model</th><th>scenario</th><th>paths</th><th>dtype</th><th>error</th><th>tolerance</th>"
       "<th>error ÷ tolerance</th><th>verdict</th><th>seed</th><th>divergence map / detail</th></tr>";
  const fs::path base = report_file.parent_path();
  for (const auto& c : report.cases) {
    const bool compared = c.verdict == "agree" || c.verdict == "diverge";
    const double r = html::ratio(c.error, c.tolerance);
    std::string bar = "-";
    if (compared) {
      bar = fmt::format(R"(<span class="bar" title="{}"><span style="width:{:.1f}%;background:{}"></span><i style="left:{:.1f}%"></i></span> {})",
                        num(r), 100.0 * bar_fraction(r), html::ratio_colour(r), 100.0 * bar_fraction(1.0), num(r));
    }
    std::string link;
    if (!c.map_file.empty()) {
      std::error_code ec;
      fs::path rel = fs::relative(c.map_file, base.empty() ? fs::path(".") : base, ec);
      if (ec || rel.empty()) rel = c.map_file;
      link = fmt::format(R"(<a class="map-link" href="{}">divergence map</a> )", escape(rel.generic_string()));
    }
    b += fmt::format(
        R"(<tr class="case" data-model="{0}" data-verdict="{1}" data-ratio="{2}"><td>{0}</td><td>{3}</td><td>{4}</td><td>{5}</td><td class="num">{6}</td><td class="num">{7}</td><td>{8}</td><td class="verdict-{1}">{1}</td><td class="num">{9}</td><td>{10}{11}</td></tr>)",
        escape(c.model), escape(c.verdict), html::attr_num(r), escape(c.scenario), escape(c.paths), escape(c.dtype),
        compared ? num(c.error) : "-", compared ? num(c.tolerance) : "-", bar, c.seed, link,
        escape(c.detail.size() > 300 ? c.detail.substr(0, 300) + "…" : c.detail));
  }
  b += "</table>";
  b += html::legend_svg();
  const char* script = R"JS(
(function () {
  var fv = document.getElementById('filter-verdict'), fm = document.getElementById('filter-model');
  var rows = document.querySelectorAll('#cases tr.case');
  function apply() {
    var shown = 0;
    rows.forEach(function (r) {
      var ok = (!fv.value || r.dataset.verdict === fv.value) && (!fm.value || r.dataset.model === fm.value);
      r.classList.toggle('hidden', !ok);
      if (ok) shown++;
    });
    document.getElementById('js-shown').textContent = shown + ' of ' + rows.length + ' cases';
  }
  location.hash.replace(/^#/, '').split('&').forEach(function (kv) {
    var p = kv.split('=');
    if (p[0] === 'verdict') fv.value = decodeURIComponent(p[1] || '');
    if (p[0] === 'model') fm.value = decodeURIComponent(p[1] || '');
  });
  fv.addEventListener('change', apply);
  fm.addEventListener('change', apply);
  apply();
})();
)JS";
  return html::page("mambadiff check", b, script);
}

void write_check_report(const CheckReport& report, const fs::path& report_file, uint64_t seed, const std::string& commit) {
  write_text_atomically(report_file, check_report_html(report, report_file, seed, commit));
}

}  // namespace mambadiff
