// `mambadiff trend HISTORY [--report F.html]`: each case's error ÷ tolerance across the recorded runs
// of `check --history` (harness/history.h), and a warning before a case fails.
//
// A case is flagged (exit 1) when its latest record
//   * is at kWarnRatio or more of its tolerance (a diverged case, ratio >= 1, is flagged too), or
//   * grew kGrowthFactor times or more against the median of its earlier records (when that median is
//     above 0: from an exact 0, every error is an "infinite" growth, and a bound on that is
//     the 0.5 rule's job).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "harness/history.h"

namespace mambadiff {

// Half the tolerance: the error has used up half its headroom; one more change like the last might
// fail the check. (README, Tolerance policy: a correct fp32 path sits at 0.05 … 0.21.)
inline constexpr double kWarnRatio = 0.5;
// 4x the median: more than the run-to-run spread of a deterministic case (which is 0: the matrix is
// seeded) and more than a different but correct summation order moves a case (~2x between the
// chunked and the plain fp32 loops), so it reads as a change of the math, not noise.
inline constexpr double kGrowthFactor = 4.0;

struct CaseTrend {
  std::string case_id;
  std::vector<double> ratios;          // error ÷ tolerance per record, in file order
  std::vector<std::string> commits;    // per record
  std::vector<std::string> dates;      // per record
  std::vector<std::string> verdicts;   // per record
  double latest = 0.0;
  double median_before = 0.0;          // of the records before the latest; 0 when there are none
  bool flagged = false;
  std::string why;                     // the flag's reason, one line; empty when not flagged
};

struct TrendReport {
  std::string source;                 // the history file
  size_t records = 0;
  std::vector<std::string> commits;   // distinct, in order of first appearance
  std::vector<CaseTrend> cases;       // flagged first, then in order of first appearance
  size_t flagged() const;
};

TrendReport analyse_trend(const std::vector<HistoryRecord>& records, const std::string& source);

// The table `trend` prints: one line per case (flagged first) and a closing summary line.
std::string trend_table(const TrendReport& report);

// The page of `trend --report`: the flagged cases and a small multiple of sparklines (one per case,
// log scale, the 0.5 and 1 lines dashed), with a tooltip per record (commit, date, ratio). Each card
// is <div class="card" data-case data-flagged data-latest-ratio data-records>; the page's script
// counts the flagged cards into #js-flagged-count. `#flagged` in the address shows the flagged only.
std::string trend_html(const TrendReport& report);

}  // namespace mambadiff
