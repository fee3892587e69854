// The error history of `check --history F`: one JSON line per compared case per run, appended, never
// rewritten, so a case's error ÷ tolerance can be followed across commits (`mambadiff trend`,
// harness/trend.h).
//
// One line (a record; keys in this order):
//   {"format": "mambadiff.history.v1", "case": "<model>/<scenario>/<paths>/<dtype>",
//    "model", "scenario", "paths", "dtype",
//    "error": 2.3e-7 | null (null: not finite -- a NaN or an infinity),
//    "tolerance": 2.0e-6, "verdict": "agree" | "diverge", "seed": 20261127...,
//    "commit": "<40 hex>[-dirty]" | "<$MAMBADIFF_COMMIT>" | "unknown",
//    "date": "2026-12-01T23:59:00Z" (UTC, the run's start)}
// Only compared cases are recorded ("agree", "diverge"): a skipped pair or a path that threw has no
// error to follow. A run's lines are appended with one write(2) (engine/output_file.h append_lines):
// all of them or none.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "harness/check_suite.h"

namespace mambadiff {

inline constexpr const char* kHistoryFormat = "mambadiff.history.v1";

struct HistoryRecord {
  std::string case_id, model, scenario, paths, dtype, verdict, commit, date;
  double error = 0.0;  // +inf when recorded as null
  double tolerance = 0.0;
  uint64_t seed = 0;
  size_t line = 0;  // 1-based line in the file it was read from
};

// The commit a run is recorded under: $MAMBADIFF_COMMIT when set and not empty (CI knows the commit
// it tests, and a binary may run outside its clone); else `git rev-parse HEAD` of the source tree the
// binary was built in (found from the corpus folder, harness/corpus_location.h), with "-dirty" when
// `git diff --quiet HEAD` says the tracked files differ from it; else "unknown".
std::string current_commit();

// Now, UTC, as 2026-12-01T23:59:00Z.
std::string utc_now();

// The records of a run as JSON lines (each ending in '\n').
std::string history_lines(const CheckReport& report, const std::string& commit, const std::string& date);

// Appends the run's records to `file` with one write (engine/output_file.h append_lines). InputError
// naming the file when it cannot (a directory, a file not ending in a newline, a full disk).
void append_history(const std::filesystem::path& file, const CheckReport& report, const std::string& commit,
                    const std::string& date);

// Every record of `file`, in file order. InputError "FILE: line N: <why>" for the first line that is
// not JSON, not a record of this format (a foreign JSON line), or lacks a key or has one of the wrong
// type, and for a last line without its newline (an interrupted write); "FILE: no records" for an
// empty file. The file is only read.
std::vector<HistoryRecord> read_history(const std::filesystem::path& file);

}  // namespace mambadiff
