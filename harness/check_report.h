// The page of `check --report F.html`: the suite as one self-contained HTML page (harness/html_page.h),
// one row per case (model, scenario, paths, dtype, error, tolerance, error ÷ tolerance as a bar on the
// log scale, verdict, seed), filters by verdict and by model, and for each failing case a link to its
// divergence map, which `check` drew into F.cases/ beside the page (CheckOptions::maps_dir).
//
// Rows are <tr class="case" data-model data-verdict data-ratio>; the filters are two <select>s
// (#filter-verdict, #filter-model), also set from the address (F.html#verdict=diverge&model=tiny);
// the page's script writes the number of rows shown into #js-shown.
#pragma once

#include <filesystem>

#include "harness/check_suite.h"

namespace mambadiff {

// The folder the divergence maps of `check --report F.html` go to: F.cases beside F (its stem).
std::filesystem::path check_report_maps_dir(const std::filesystem::path& report_file);

// The page; links are relative to the folder of `report_file`.
std::string check_report_html(const CheckReport& report, const std::filesystem::path& report_file, uint64_t seed,
                              const std::string& commit);

// check_report_html through the one atomic writer (engine/output_file.h).
void write_check_report(const CheckReport& report, const std::filesystem::path& report_file, uint64_t seed,
                        const std::string& commit);

}  // namespace mambadiff
