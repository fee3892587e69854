// The reports (issue 13): the divergence map of `diff`/`repro --report`, the suite page of
// `check --report`, the history of `check --history` and `trend`. The pages are opened in headless
// Chromium (Debian's package, scripts/setup.sh) and checked in the DOM the browser rendered: the
// marked first divergence, the numbers, and values the pages' own scripts computed (proof that the
// browser ran them). Without chromium those tests report SKIPPED.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "engine/errors.h"
#include "engine/output_file.h"
#include "harness/check_report.h"
#include "harness/check_suite.h"
#include "harness/history.h"
#include "harness/html_page.h"
#include "harness/path_registry.h"
#include "harness/trend.h"
#include "mutants/catalog.h"
#include "tests/test_support.h"

namespace mambadiff {
namespace {

namespace fs = std::filesystem;
using test_support::lines_of;
using test_support::model_dir;
using test_support::read_text;
using test_support::run_cli;
using test_support::run_shell;
using test_support::source_dir;
using test_support::write_text;

// Runs mambadiff with `args`: exit code and stderr only (stdout dropped).
test_support::Cli run_cli_stderr(const std::string& args, const fs::path& dir) {
  const fs::path err = dir / "cli.stderr";
  auto r = run_shell(fmt::format("( {} {} 2>{} >/dev/null )", MAMBADIFF_BINARY, args, err.string()));
  r.out = read_text(err);
  return r;
}

fs::path report_dir(const std::string& name) { return test_support::fresh_dir("reports", name); }

// --- the browser -------------------------------------------------------------------------------

std::string chromium_binary() {
  for (const char* name : {"chromium", "chromium-browser", "google-chrome"}) {
    const auto r = run_shell(fmt::format("command -v {}", name));
    if (r.exit_code == 0) return lines_of(r.out).at(0);
  }
  return "";
}

#define REQUIRE_CHROMIUM()                                                                       \
  if (chromium_binary().empty()) GTEST_SKIP() << "chromium not installed (scripts/setup.sh installs it)"

// The DOM after the page loaded and its scripts ran (chromium --dump-dom), `fragment` appended to the
// address (#verdict=diverge). Each call its own profile folder, so tests may run in parallel.
std::string rendered_dom(const fs::path& page, const std::string& fragment = "") {
  const fs::path profile = page.parent_path() / (page.filename().string() + ".chromium-profile");
  const auto r = run_shell(fmt::format(
      "timeout 120 {} --headless --no-sandbox --disable-gpu --user-data-dir={} --dump-dom 'file://{}{}' 2>/dev/null",
      chromium_binary(), profile.string(), fs::absolute(page).string(), fragment));
  EXPECT_EQ(r.exit_code, 0) << r.out;
  fs::remove_all(profile);
  return r.out;
}

// The opening tags in `dom` that contain `needle` (e.g. id="first-divergence").
std::vector<std::string> tags_with(const std::string& dom, const std::string& needle) {
  std::vector<std::string> out;
  for (size_t at = dom.find(needle); at != std::string::npos; at = dom.find(needle, at + 1)) {
    const size_t open = dom.rfind('<', at), close = dom.find('>', at);
    if (open != std::string::npos && close != std::string::npos) out.push_back(dom.substr(open, close - open + 1));
  }
  return out;
}

// The value of attribute `name` in an opening tag; "" when absent.
std::string attr(const std::string& tag, const std::string& name) {
  const std::regex re("\\s" + name + "=\"([^\"]*)\"");
  std::smatch m;
  return std::regex_search(tag, m, re) ? m[1].str() : "";
}

// The text of the element with id `id`.
std::string text_of(const std::string& dom, const std::string& id) {
  const std::regex re("id=\"" + id + "\"[^>]*>([^<]*)<");
  std::smatch m;
  return std::regex_search(dom, m, re) ? m[1].str() : "(no element #" + id + ")";
}

struct Cell {
  size_t op;
  int64_t token, layer;
  double ratio;
};
std::vector<Cell> heat_cells(const std::string& dom) {
  std::vector<Cell> cells;
  for (const auto& tag : tags_with(dom, "class=\"cell\"")) {
    cells.push_back({std::stoul(attr(tag, "data-op")), std::stoll(attr(tag, "data-token")),
                     std::stoll(attr(tag, "data-layer")), std::strtod(attr(tag, "data-ratio").c_str(), nullptr)});
  }
  return cells;
}

// --- divergence maps -----------------------------------------------------------------------------

// `diff --report` on a real planted divergence that needs no mutant: HF transformers 5.17's decode
// without the dt clamp (corpus/regressions/hf-decode-no-dt-clamp, its exported tensors vs reference).
TEST(DivergenceMapPage, DiffReportMarksTheFirstDivergenceTheBrowserRenders) {
  REQUIRE_CHROMIUM();
  const fs::path dir = report_dir("diff_report");
  const fs::path c = source_dir() / "corpus/regressions/hf-decode-no-dt-clamp";
  const auto r = run_cli(fmt::format("diff {}/scenario.json --paths file:{}/transformers-5.17.safetensors,reference "
                                     "--json {}/d.json --report {}/d.html",
                                     c.string(), c.string(), dir.string(), dir.string()));
  ASSERT_EQ(r.exit_code, 1) << r.out;
  const auto first = nlohmann::json::parse(read_text(dir / "d.json")).at("first_divergence");
  const std::string dom = rendered_dom(dir / "d.html");
  const auto markers = tags_with(dom, "id=\"first-divergence\"");
  ASSERT_EQ(markers.size(), 1u) << "exactly one marked first divergence";
  const std::string& m = markers[0];
  EXPECT_EQ(attr(m, "data-op"), std::to_string(first.at("op").get<int>()));
  EXPECT_EQ(attr(m, "data-token"), std::to_string(first.at("token").get<int>()));
  EXPECT_EQ(attr(m, "data-row"), std::to_string(first.at("batch").get<int>()));
  EXPECT_EQ(attr(m, "data-tensor"), "logits");
  const double ratio = first.at("error").get<double>() / first.at("tolerance").get<double>();
  EXPECT_NEAR(std::strtod(attr(m, "data-ratio").c_str(), nullptr), ratio, 1e-6 * ratio);
  // The page's script read the marker back: the numbers the browser shows are diff's.
  const std::string shown = text_of(dom, "js-first-divergence");
  const std::string prefix = fmt::format("op {}, row {}, token {}: logits error ÷ tolerance ", first.at("op").get<int>(),
                                         first.at("batch").get<int>(), first.at("token").get<int>());
  ASSERT_EQ(shown.rfind(prefix, 0), 0u) << shown;
  EXPECT_NEAR(std::strtod(shown.c_str() + prefix.size(), nullptr), ratio, 0.01 * ratio) << shown;
  EXPECT_NE(dom.find("mambadiff diff"), std::string::npos) << "the reproducing command";
  // A file: side has no layer outputs: the heat map holds the logits row only, and the page says so.
  for (const Cell& cell : heat_cells(dom)) EXPECT_EQ(cell.layer, -1);
}

// The issue's done-when: a mutant's planted bug, through the CLI (`mutants --cases-dir` writes its
// first kill as a case; `repro --report` draws the replay), shows where it starts and how it spreads.
TEST(DivergenceMapPage, ReproReportOfAMutantShowsWhereTheErrorStartsAndHowItSpreads) {
  REQUIRE_CHROMIUM();
  const fs::path dir = report_dir("repro_report");
  auto r = run_cli(fmt::format("mutants --model {} --mutant inter-chunk-axis --cases-dir {}/cases",
                               model_dir("tiny").string(), dir.string()));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  r = run_cli(fmt::format("repro {0}/cases/inter-chunk-axis --json {0}/r.json --report {0}/r.html", dir.string()));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const auto first = nlohmann::json::parse(read_text(dir / "r.json")).at("first_divergence");
  const std::string dom = rendered_dom(dir / "r.html");
  const auto markers = tags_with(dom, "id=\"first-divergence\"");
  ASSERT_EQ(markers.size(), 1u);
  const std::string& m = markers[0];
  ASSERT_EQ(attr(m, "data-tensor"), "layer_output");
  const size_t op = std::stoul(attr(m, "data-op"));
  const int64_t token = std::stoll(attr(m, "data-token")), layer = std::stoll(attr(m, "data-layer"));
  EXPECT_EQ(op, first.at("op").get<size_t>());
  EXPECT_EQ(token, first.at("token").get<int64_t>());
  EXPECT_EQ(layer, first.at("layer").get<int64_t>());
  // The wrong inter-chunk axis: tokens of the first chunk are right, the error starts at the second
  // chunk (tiny's chunk_size is 16) ...
  EXPECT_EQ(token, 16);
  const std::vector<Cell> cells = heat_cells(dom);
  ASSERT_FALSE(cells.empty());
  size_t over = 0, over_deeper = 0;
  for (const Cell& c : cells) {
    if (c.ratio <= 1) continue;
    ++over;
    // ... nothing is over its tolerance before it in time ...
    EXPECT_FALSE(c.op < op || (c.op == op && c.token < token)) << "op " << c.op << " token " << c.token;
    over_deeper += c.op == op && c.token >= token && (c.layer > layer || c.layer == -1);
  }
  // ... and it spreads into the later layers and the logits.
  EXPECT_GT(over_deeper, 0u);
  // The count the page's script made from the drawn cells equals the C++ count and the DOM's.
  const auto heat = tags_with(dom, "id=\"heat-map\"");
  ASSERT_EQ(heat.size(), 1u);
  EXPECT_EQ(attr(heat[0], "data-cells-over"), std::to_string(over));
  EXPECT_EQ(text_of(dom, "js-cells-over"), std::to_string(over));
  EXPECT_NE(text_of(dom, "js-first-divergence").find(fmt::format("op {}, row 0, token {}, layer {}", op, token, layer)),
            std::string::npos)
      << text_of(dom, "js-first-divergence");
  // Traces and cache attributes side by side, and the command.
  EXPECT_NE(dom.find("id=\"traces\""), std::string::npos);
  EXPECT_NE(dom.find("id=\"cache-attributes\""), std::string::npos);
  EXPECT_NE(dom.find("mambadiff repro"), std::string::npos);
}

// A dispatch-trace divergence (the incident's stand-in cache) is marked on the trace row that differs.
TEST(DivergenceMapPage, DispatchMismatchIsMarkedOnTheTraceRow) {
  const fs::path dir = report_dir("trace_report");
  const auto r = run_cli(fmt::format("repro {}/corpus/regressions/stand-in-cache --report {}/t.html",
                                     source_dir().string(), dir.string()));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const std::string page = read_text(dir / "t.html");
  const auto markers = tags_with(page, "id=\"first-divergence\"");
  ASSERT_EQ(markers.size(), 1u);
  EXPECT_EQ(markers[0].rfind("<tr", 0), 0u) << markers[0];
  EXPECT_EQ(attr(markers[0], "data-tensor"), "dispatch_trace");
  EXPECT_NE(attr(markers[0], "class").find("first-mismatch"), std::string::npos);
  EXPECT_EQ(page.find("src=\"http"), std::string::npos) << "self-contained: nothing fetched";
  EXPECT_EQ(page.find("<link"), std::string::npos);
}

// --- check --report --------------------------------------------------------------------------------

// In-process: `check` knows only the product paths; a mutant is plugged in the way `repro` does.
TEST(CheckReportPage, OneRowPerCaseFiltersAndALinkPerFailingCaseToItsMap) {
  REQUIRE_CHROMIUM();
  mutants::install_mutant_paths();
  const fs::path dir = report_dir("check_report");
  const fs::path page = dir / "suite.html";
  CheckOptions opt;
  opt.models = {model_dir("tiny")};
  opt.paths = {"reference", "chunked", "mutant:inter-chunk-axis"};
  opt.only_scenario = "continue";  // 9 tokens, then 19 over a chunk boundary, then 2
  opt.quiet = true;
  opt.maps_dir = check_report_maps_dir(page);
  const CheckReport rep = run_check(opt);
  ASSERT_EQ(rep.cases.size(), 3u);
  write_check_report(rep, page, opt.seed, "test-commit");
  EXPECT_EQ(opt.maps_dir, dir / "suite.cases");

  const std::string dom = rendered_dom(page);
  const auto rows = tags_with(dom, "class=\"case");
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(text_of(dom, "js-shown"), "3 of 3 cases");
  const auto links = tags_with(dom, "class=\"map-link\"");
  ASSERT_EQ(links.size(), 2u) << "the two pairs with the mutant diverge";
  std::set<fs::path> linked;
  for (const auto& l : links) linked.insert(fs::canonical(dir / attr(l, "href")));
  for (const CheckCase& c : rep.cases) {
    if (c.verdict != "diverge") {
      EXPECT_TRUE(c.map_file.empty()) << c.paths;
      continue;
    }
    ASSERT_TRUE(fs::is_regular_file(c.map_file)) << c.map_file;
    EXPECT_TRUE(linked.count(fs::canonical(c.map_file))) << c.map_file << " is linked from its row";
    // The map marks the divergence the row reports.
    std::smatch m;
    ASSERT_TRUE(std::regex_search(c.detail, m, std::regex(R"(^op (\d+), row (\d+), token (\d+), layer (\d+): (\S+) error)")))
        << c.detail;
    const auto markers = tags_with(read_text(c.map_file), "id=\"first-divergence\"");
    ASSERT_EQ(markers.size(), 1u) << c.map_file;
    EXPECT_EQ(attr(markers[0], "data-op"), m[1].str());
    EXPECT_EQ(attr(markers[0], "data-row"), m[2].str());
    EXPECT_EQ(attr(markers[0], "data-token"), m[3].str());
    EXPECT_EQ(attr(markers[0], "data-layer"), m[4].str());
    EXPECT_EQ(attr(markers[0], "data-tensor"), m[5].str());
    EXPECT_EQ(m[1].str(), "1") << "the continuation over the chunk boundary is where it parts";
  }
  // The filters, set from the address, hide rows in the browser.
  const std::string diverging = rendered_dom(page, "#verdict=diverge");
  EXPECT_EQ(text_of(diverging, "js-shown"), "2 of 3 cases");
  for (const auto& row : tags_with(diverging, "class=\"case")) {
    EXPECT_EQ(attr(row, "class").find("hidden") != std::string::npos, attr(row, "data-verdict") != "diverge") << row;
  }
  EXPECT_EQ(text_of(rendered_dom(page, "#model=tiny"), "js-shown"), "3 of 3 cases");
  EXPECT_EQ(text_of(rendered_dom(page, "#verdict=agree&model=tiny"), "js-shown"), "1 of 3 cases");
  EXPECT_EQ(text_of(rendered_dom(page, "#model=nosuchmodel"), "js-shown"), "3 of 3 cases")
      << "an unknown model in the address is no filter";
}

// Through the CLI: a passing suite's page has a row per case, no links, and no empty maps folder.
TEST(CheckReportPage, APassingRunLinksNothingAndLeavesNoMapsFolder) {
  const fs::path dir = report_dir("check_report_pass");
  const auto r = run_cli(fmt::format("check --model {} --paths reference,chunked --scenario prefill_1 --report {}/c.html",
                                     model_dir("tiny").string(), dir.string()));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const std::string page = read_text(dir / "c.html");
  EXPECT_EQ(tags_with(page, "class=\"case\"").size(), 4u);
  EXPECT_TRUE(tags_with(page, "class=\"map-link\"").empty());
  EXPECT_FALSE(fs::exists(dir / "c.cases"));
}

// --- history and trend -------------------------------------------------------------------------------

// A test path: the reference's own result with one logit moved by drift_fraction × scale (so its
// error against the reference is exactly that, relative to the logits' scale), in prefill_16 only,
// labelled float32 so that it gets float32's tolerance. Stands for a kernel whose error grows commit
// after commit.
double drift_fraction = 0.0;
void install_drift_path() {
  install_path_provider({"drift:", [] { return std::vector<std::string>{"drift:reference-plus"}; },
                         [](const std::string& name, const Scenario& s, const Mamba2Checkpoint& ck) {
                           ScenarioResult r = evaluate_path("reference", s, ck);
                           r.path = name;
                           r.dtype = "float32";
                           for (auto& op : r.ops) {
                             if (op.kind != OpKind::kForward || op.logits.size(1) != 16) continue;
                             op.logits = op.logits.clone();
                             const double scale = op.logits.abs().max().item<double>();
                             op.logits[0][0][0] += drift_fraction * scale;
                           }
                           return r;
                         }});
}

TEST(History, TrendFlagsACaseWhoseErrorGrewAcrossThreeRecordedCommits) {
  REQUIRE_CHROMIUM();
  install_drift_path();
  const fs::path dir = report_dir("trend");
  const fs::path history = dir / "history.jsonl";
  CheckOptions opt;
  opt.models = {model_dir("tiny")};
  opt.paths = {"reference", "drift:reference-plus"};
  opt.only_scenario = "prefill_1";  // prefill_1, _15, _16, _17: only _16 drifts
  opt.quiet = true;
  drift_fraction = 0.0;
  const CheckReport probe = run_check(opt);
  ASSERT_EQ(probe.cases.size(), 4u);
  double tol = 0;
  for (const auto& c : probe.cases)
    if (c.scenario == "prefill_16") tol = c.tolerance;
  ASSERT_GT(tol, 0);
  // Three commits: 5 %, 6 %, then 30 % of the tolerance: still agreeing, below 0.5, but 5.5x the
  // median of the earlier two -- the warning before it fails.
  for (const auto& [commit, fraction] : {std::pair<const char*, double>{"c1", 0.05}, {"c2", 0.06}, {"c3", 0.30}}) {
    ASSERT_EQ(setenv("MAMBADIFF_COMMIT", commit, 1), 0);
    drift_fraction = fraction * tol;
    const CheckReport rep = run_check(opt);
    EXPECT_TRUE(rep.all_agree());
    append_history(history, rep, current_commit(), utc_now());
  }
  unsetenv("MAMBADIFF_COMMIT");
  const std::string before = read_text(history);
  EXPECT_EQ(lines_of(before).size(), 12u);

  const auto r = run_cli(fmt::format("trend {} --report {}/trend.html", history.string(), dir.string()));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  const std::string drifting = "tiny/prefill_16/reference,drift:reference-plus/float32";
  size_t drift_lines = 0;
  for (const auto& line : lines_of(r.out)) {
    if (line.rfind(drifting, 0) == 0) {
      ++drift_lines;
      EXPECT_NE(line.find("WARN: grew"), std::string::npos) << line;
    } else if (line.rfind("tiny/", 0) == 0) {
      EXPECT_NE(line.find(" ok"), std::string::npos) << line;
    }
  }
  EXPECT_EQ(drift_lines, 1u) << r.out;
  EXPECT_EQ(read_text(history), before) << "trend never rewrites the history";

  const std::string dom = rendered_dom(dir / "trend.html");
  EXPECT_EQ(text_of(dom, "js-flagged-count"), "1");
  for (const auto& card : tags_with(dom, "data-case=\"")) {
    EXPECT_EQ(attr(card, "data-flagged"), attr(card, "data-case") == drifting ? "true" : "false") << card;
    EXPECT_EQ(attr(card, "data-records"), "3");
    if (attr(card, "data-case") == drifting) {
      EXPECT_NEAR(std::stod(attr(card, "data-latest-ratio")), 0.30, 1e-3);
    }
  }
  const std::string only_flagged = rendered_dom(dir / "trend.html", "#flagged");
  for (const auto& card : tags_with(only_flagged, "data-case=\"")) {
    EXPECT_EQ(attr(card, "class").find("hidden") == std::string::npos, attr(card, "data-case") == drifting) << card;
  }
}

HistoryRecord record(const std::string& id, double error, double tolerance) {
  HistoryRecord r;
  r.case_id = id;
  r.error = error;
  r.tolerance = tolerance;
  r.commit = "c";
  r.verdict = error > tolerance ? "diverge" : "agree";
  return r;
}

TEST(Trend, FlagsHalfTheToleranceAndFourTimesTheEarlierMedianOnly) {
  const auto flagged = [](std::vector<double> ratios) {
    std::vector<HistoryRecord> recs;
    for (double r : ratios) recs.push_back(record("x", r, 1.0));
    return analyse_trend(recs, "h").cases.at(0).flagged;
  };
  EXPECT_FALSE(flagged({0.1}));
  EXPECT_TRUE(flagged({0.5}));             // half the tolerance
  EXPECT_TRUE(flagged({0.1, 0.1, 2.0}));   // diverged
  EXPECT_TRUE(flagged({0.01, 0.02, 0.03, 0.1}));   // 5x the median 0.02
  EXPECT_TRUE(flagged({0.01, 0.01, 0.04}));        // exactly 4x
  EXPECT_FALSE(flagged({0.01, 0.01, 0.039}));      // under 4x
  EXPECT_FALSE(flagged({0.1, 0.3, 0.2}));          // up and down, under both lines
  EXPECT_FALSE(flagged({0.0, 0.0, 0.01}));         // from an exact 0: only the 0.5 rule holds
  EXPECT_TRUE(flagged({0.0, 0.0, 0.6}));
  // A non-finite error (recorded as null) is flagged.
  std::vector<HistoryRecord> recs = {record("x", 1e-3, 1.0), record("x", std::numeric_limits<double>::infinity(), 1.0)};
  EXPECT_TRUE(analyse_trend(recs, "h").cases.at(0).flagged);
}

TEST(History, CheckAppendsOneWholeLinePerCaseWithTheCommitFromTheEnvironment) {
  const fs::path dir = report_dir("check_history");
  const fs::path h = dir / "h.jsonl";
  const std::string check = fmt::format("check --model {} --paths reference,chunked --scenario prefill_1 --history {}",
                                        model_dir("tiny").string(), h.string());
  auto r = run_shell(fmt::format("MAMBADIFF_COMMIT=feedc0de {} {}", MAMBADIFF_BINARY, check));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const std::string first = read_text(h);
  ASSERT_EQ(lines_of(first).size(), 4u);
  for (const auto& line : lines_of(first)) {
    const auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j.at("format"), kHistoryFormat);
    EXPECT_EQ(j.at("commit"), "feedc0de");
    EXPECT_TRUE(std::regex_match(j.at("date").get<std::string>(), std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)")));
    EXPECT_EQ(j.at("case"), fmt::format("tiny/{}/reference,chunked/float32", j.at("scenario").get<std::string>()));
    EXPECT_LT(j.at("error").get<double>(), j.at("tolerance").get<double>());
  }
  // Without the variable: the source tree's commit (this is a git checkout) or "unknown".
  r = run_shell(fmt::format("env -u MAMBADIFF_COMMIT {} {}", MAMBADIFF_BINARY, check));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const std::string both = read_text(h);
  EXPECT_EQ(both.substr(0, first.size()), first) << "appended, never rewritten";
  const auto second = nlohmann::json::parse(lines_of(both).at(4));
  EXPECT_TRUE(std::regex_match(second.at("commit").get<std::string>(), std::regex("[0-9a-f]{40}(-dirty)?|unknown")))
      << second.at("commit");
  // Two runs of a correct path: no drift.
  r = run_cli("trend " + h.string());
  EXPECT_EQ(r.exit_code, 0) << r.out;
}

TEST(History, AppendRefusesAFileWhoseLastLineWasCut) {
  const fs::path dir = report_dir("append_cut");
  const fs::path h = dir / "h.jsonl";
  write_text(h, "{\"format\": \"mambadiff.history.v1\", \"case\": \"x\"");  // no newline: a cut line
  const std::string msg = test_support::input_error([&] { append_lines(h, "{}\n"); });
  EXPECT_NE(msg.find(h.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("newline"), std::string::npos) << msg;
  EXPECT_EQ(read_text(h), "{\"format\": \"mambadiff.history.v1\", \"case\": \"x\"") << "left as it was";
}

// --- bad input: exit 2, one line naming the file (and line) ------------------------------------------

class ReportsBadInput : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = report_dir(::testing::UnitTest::GetInstance()->current_test_info()->name());
    good_ = R"({"format":"mambadiff.history.v1","case":"tiny/decode/reference,chunked/float32","model":"tiny","scenario":"decode","paths":"reference,chunked","dtype":"float32","error":1e-7,"tolerance":2e-6,"verdict":"agree","seed":1,"commit":"c1","date":"2026-12-01T00:00:00Z"})";
  }
  // `trend` on a history of `lines` (joined with newlines, `tail` after the last): exit 2, one line
  // naming the file and `line`.
  void expect_trend_rejects(const std::string& text, size_t line, const std::string& why) {
    const fs::path h = dir_ / "h.jsonl";
    write_text(h, text);
    const auto r = run_cli_stderr("trend " + h.string(), dir_);
    EXPECT_EQ(r.exit_code, 2) << r.out;
    const auto lines = lines_of(r.out);
    ASSERT_EQ(lines.size(), 1u) << r.out;
    EXPECT_NE(lines[0].find(fmt::format("{}: line {}:", h.string(), line)), std::string::npos) << lines[0];
    EXPECT_NE(lines[0].find(why), std::string::npos) << lines[0];
    EXPECT_EQ(read_text(h), text) << "never rewritten";
  }
  fs::path dir_;
  std::string good_;
};

TEST_F(ReportsBadInput, TrendNamesTheLineOfACorruptRecord) {
  expect_trend_rejects(good_ + "\n" + good_ + "\n{\"format\": \"mambadiff.history.v1\", \"ca\n", 3, "");
}
TEST_F(ReportsBadInput, TrendNamesTheLineOfAForeignJsonLine) {
  expect_trend_rejects(good_ + "\n{\"tests\": 12, \"passed\": 12}\n" + good_ + "\n", 2, "not a mambadiff history record");
}
TEST_F(ReportsBadInput, TrendNamesTheLineOfARecordWithAWrongType) {
  std::string bad = good_;
  bad.replace(bad.find("\"tolerance\":2e-6"), 16, "\"tolerance\":\"small\"");
  expect_trend_rejects(good_ + "\n" + bad + "\n", 2, "");
}
TEST_F(ReportsBadInput, TrendNamesALastLineCutByAnInterruptedWrite) {
  expect_trend_rejects(good_ + "\n" + good_, 2, "no newline");
}
TEST_F(ReportsBadInput, TrendNamesANegativeTolerance) {
  std::string bad = good_;
  bad.replace(bad.find("\"tolerance\":2e-6"), 16, "\"tolerance\":-1.0");
  expect_trend_rejects(bad + "\n", 1, "tolerance");
}
TEST_F(ReportsBadInput, TrendOfAnEmptyOrMissingHistory) {
  write_text(dir_ / "empty.jsonl", "");
  for (const fs::path& h : {dir_ / "empty.jsonl", dir_ / "missing.jsonl"}) {
    const auto r = run_cli_stderr("trend " + h.string(), dir_);
    EXPECT_EQ(r.exit_code, 2) << r.out;
    ASSERT_EQ(lines_of(r.out).size(), 1u) << r.out;
    EXPECT_NE(r.out.find(h.string()), std::string::npos) << r.out;
  }
}

TEST_F(ReportsBadInput, UnwritableReportPathsAreOneLineNamingTheFile) {
  const std::string nowhere = (dir_ / "no/such/folder").string();
  const std::string tiny = model_dir("tiny").string();
  const fs::path regression = source_dir() / "corpus/regressions/stand-in-cache";
  const std::vector<std::string> commands = {
      fmt::format("diff {}/scenario.json --paths reference,chunked --report {}/d.html", regression.string(), nowhere),
      fmt::format("repro {} --report {}/r.html", regression.string(), nowhere),
      fmt::format("check --model {} --paths reference,chunked --scenario prefill_1 --report {}/c.html", tiny, nowhere),
      fmt::format("check --model {} --paths reference,chunked --scenario prefill_1 --history {}/h.jsonl", tiny, nowhere),
      // A folder where the file should be.
      fmt::format("check --model {} --paths reference,chunked --scenario prefill_1 --history {}", tiny, dir_.string()),
      fmt::format("diff {}/scenario.json --paths reference,chunked --report {}", regression.string(), dir_.string()),
  };
  for (const auto& c : commands) {
    const auto r = run_cli_stderr(c, dir_);
    EXPECT_EQ(r.exit_code, 2) << c << "\n" << r.out;
    const auto lines = lines_of(r.out);
    ASSERT_EQ(lines.size(), 1u) << c << "\n" << r.out;
    EXPECT_TRUE(lines[0].find(nowhere) != std::string::npos || lines[0].find(dir_.string()) != std::string::npos)
        << lines[0];
  }
  EXPECT_FALSE(fs::exists(dir_ / "no"));
}

// --- the shared page pieces -----------------------------------------------------------------------

TEST(HtmlPage, RatioAndItsColourScale) {
  EXPECT_EQ(html::ratio(1e-6, 2e-6), 0.5);
  EXPECT_EQ(html::ratio(0, 0), 0.0);
  EXPECT_TRUE(std::isinf(html::ratio(1e-9, 0)));
  EXPECT_TRUE(std::isinf(html::ratio(std::nan(""), 1)));
  EXPECT_EQ(html::ratio_colour(std::numeric_limits<double>::infinity()), "#000000");
  EXPECT_EQ(html::ratio_colour(1.0), "#f46d43");      // the tolerance: the first red
  EXPECT_EQ(html::ratio_colour(0.5), "#fee090");      // trend's warning: yellow
  EXPECT_EQ(html::ratio_colour(0.0), html::ratio_colour(1e-9));  // below the scale: its darkest blue
  EXPECT_EQ(html::escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
  EXPECT_EQ(html::attr_num(std::numeric_limits<double>::infinity()), "Infinity");
}

}  // namespace
}  // namespace mambadiff
