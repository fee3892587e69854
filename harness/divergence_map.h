// The divergence map: one self-contained HTML page (harness/html_page.h) drawing a comparison of two
// paths on a scenario, written by `diff --report`, `repro --report` and, per failing case, by
// `check --report`. It shows where the two paths part and how the error spreads:
//   * a heat map of error ÷ tolerance per layer (the residual stream after each layer, then the
//     logits) × token, the forward ops side by side in time order, on a log colour scale, with a
//     tooltip per cell (error, tolerance, ratio, each batch row's error);
//   * curves of error ÷ tolerance along the tokens, one per layer; and of the cache tensors
//     (ssm_states, conv_states) after each op, one per layer and batch row;
//   * the dispatch traces of both paths side by side (mismatches highlighted) and the cache
//     attributes side by side (seqlen_offset, shapes, dtypes, devices);
//   * the command that reproduces it.
// The first divergence (compare_results') is marked by exactly one element with
// id="first-divergence" (class "first-divergence"), wherever it is: a heat-map cell, a point on a
// cache curve, a trace row, a cache-attribute row, or the summary box for anything else. It carries
// data-op, data-row, data-token, data-layer (-1: none), data-tensor, data-error, data-tolerance and
// data-ratio (harness/html_page.h attr_num), which the page's own script reads back into the
// summary (#js-first-divergence) and tests read from the rendered DOM.
#pragma once

#include <filesystem>
#include <string>

#include "harness/divergence_case.h"
#include "harness/scenario.h"

namespace mambadiff {

struct DivergenceMapContext {
  std::string title;     // the page's heading
  std::string command;   // the command(s) that reproduce it, one per line
  std::string scenario;  // the scenario as the user knows it (a file, or check's matrix name)
  std::string model;     // the model folder
};

// The page for `run` (both results, the reference, the comparison and its tolerance baselines),
// played from `scenario` (for the ops' names and sizes).
std::string divergence_map_html(const Scenario& scenario, const CaseRun& run, const DivergenceMapContext& context);

// divergence_map_html written to `file` through the one atomic writer (engine/output_file.h):
// InputError naming the file when it cannot be written.
void write_divergence_map(const std::filesystem::path& file, const Scenario& scenario, const CaseRun& run,
                          const DivergenceMapContext& context);

}  // namespace mambadiff
