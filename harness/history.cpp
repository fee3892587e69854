#include "harness/history.h"

#include <fmt/format.h>
#include <sys/wait.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <limits>
#include <nlohmann/json.hpp>

#include "engine/errors.h"
#include "engine/input_file.h"
#include "engine/output_file.h"
#include "harness/corpus_location.h"

namespace mambadiff {

namespace {

// A history grows by ~200 bytes per case per run (62 cases on the embedded models: 12 kB a run), so
// input_file.h's 64 MiB limit for JSON files would be reached after ~5000 runs; 1 GiB is decades of
// nightly runs and still fits in memory.
constexpr uint64_t kMaxHistoryBytes = uint64_t{1} << 30;

// The command's stdout (first line) and whether it exited 0.
std::pair<std::string, bool> run_quietly(const std::string& command) {
  FILE* p = popen((command + " 2>/dev/null").c_str(), "r");
  if (!p) return {"", false};
  std::array<char, 256> buf{};
  std::string out;
  if (fgets(buf.data(), buf.size(), p)) out = buf.data();
  while (fgets(buf.data(), buf.size(), p)) {
  }
  const int status = pclose(p);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return {out, status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0};
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

}  // namespace

std::string current_commit() {
  if (const char* env = std::getenv("MAMBADIFF_COMMIT"); env && *env) return env;
  try {
    const std::string tree = shell_quote(corpus_dir().parent_path().string());
    const auto [head, ok] = run_quietly(fmt::format("git -C {} rev-parse HEAD", tree));
    if (!ok || head.size() != 40) return "unknown";
    const auto [unused, clean] = run_quietly(fmt::format("git -C {} diff --quiet HEAD", tree));
    return clean ? head : head + "-dirty";
  } catch (const InputError&) {
    return "unknown";  // no corpus found: no source tree to ask
  }
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string history_lines(const CheckReport& report, const std::string& commit, const std::string& date) {
  std::string out;
  for (const auto& c : report.cases) {
    if (c.verdict != "agree" && c.verdict != "diverge") continue;
    nlohmann::ordered_json j;
    j["format"] = kHistoryFormat;
    j["case"] = c.id();
    j["model"] = c.model;
    j["scenario"] = c.scenario;
    j["paths"] = c.paths;
    j["dtype"] = c.dtype;
    j["error"] = std::isfinite(c.error) ? nlohmann::ordered_json(c.error) : nlohmann::ordered_json(nullptr);
    j["tolerance"] = c.tolerance;
    j["verdict"] = c.verdict;
    j["seed"] = c.seed;
    j["commit"] = commit;
    j["date"] = date;
    out += j.dump() + "\n";  // dump() without indent: one line
  }
  return out;
}

void append_history(const std::filesystem::path& file, const CheckReport& report, const std::string& commit,
                    const std::string& date) {
  append_lines(file, history_lines(report, commit, date));
}

std::vector<HistoryRecord> read_history(const std::filesystem::path& file) {
  const std::string text = read_input_file(file, kMaxHistoryBytes);
  std::vector<HistoryRecord> records;
  size_t start = 0, line = 0;
  while (start < text.size()) {
    ++line;
    const size_t end = text.find('\n', start);
    const std::string where = fmt::format("{}: line {}", file.string(), line);
    if (end == std::string::npos) {
      throw InputError(where + ": no newline at its end (an interrupted write?): not a whole record");
    }
    const std::string body = text.substr(start, end - start);
    start = end + 1;
    const nlohmann::json j = parse_input_json(body, where);
    if (!j.is_object() || !j.contains("format") || j["format"] != kHistoryFormat) {
      throw InputError(fmt::format("{}: not a mambadiff history record (\"format\" must be \"{}\"): {}", where,
                                   kHistoryFormat, quote_json(j)));
    }
    HistoryRecord r = with_json_errors(where, [&] {
      HistoryRecord x;
      x.case_id = j.at("case").get<std::string>();
      x.model = j.value("model", "");
      x.scenario = j.value("scenario", "");
      x.paths = j.value("paths", "");
      x.dtype = j.value("dtype", "");
      x.verdict = j.at("verdict").get<std::string>();
      x.commit = j.at("commit").get<std::string>();
      x.date = j.at("date").get<std::string>();
      const auto& e = j.at("error");
      x.error = e.is_null() ? std::numeric_limits<double>::infinity() : e.get<double>();
      x.tolerance = j.at("tolerance").get<double>();
      x.seed = j.value("seed", uint64_t{0});
      return x;
    });
    if (r.case_id.empty()) throw InputError(where + ": key 'case': empty");
    if (!std::isfinite(r.tolerance) || r.tolerance < 0) {
      throw InputError(fmt::format("{}: key 'tolerance': {} is not a finite number >= 0", where, r.tolerance));
    }
    if (std::isfinite(r.error) && r.error < 0) {
      throw InputError(fmt::format("{}: key 'error': {} is negative", where, r.error));
    }
    r.line = line;
    records.push_back(std::move(r));
  }
  if (records.empty()) throw InputError(fmt::format("{}: no records (an empty history)", file.string()));
  return records;
}

}  // namespace mambadiff
