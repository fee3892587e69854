// `mambadiff reduce CASE -o OUT` (SPEC §6): shrink a divergence case while it still diverges in
// the same class (harness/divergence_case.h divergence_class: the kind of tensor that parts first,
// and whether the error is non-finite).
//
// Greedy passes, repeated until a whole round shrinks nothing (or the budget runs out):
//   layers  the model cut to its first k layers (Mamba2Checkpoint::first_layers; injections into
//           the layers cut are dropped with them), smallest k first
//   ops     drop runs of ops, halving the run length down to single ops; dropping a snapshot drops
//           the restores that need it; at least one forward op stays
//   tokens  per forward op: a shorter prefix or suffix (1, 2, 3, T/4, T/2, 3T/4, T-1 tokens)
//   rows    a single batch row (tokens and [B,H,P,N] deltas alike), then the first half
//   values  token ids to 0 (the op at once, halved, then one by one for short ops); deltas scaled
//           by 0, 0.1, 0.5 while it still diverges
// A candidate that the paths reject (InputError, an invalid op sequence) is not interesting.
// Every replay runs the reference, the plain baseline and both paths. A `file:` side (another
// system's export) cannot be re-run by itself: with ReduceOptions::exporter, every candidate is
// exported anew by that command (the candidate's checkpoint and scenario written to a work folder,
// the command run on them), and the reduced case keeps the export of its own scenario beside it, so
// `repro` replays it on any CPU without the other system.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

#include "harness/divergence_case.h"

namespace mambadiff {

struct ReduceOptions {
  int64_t max_candidates = 4000;  // replays tried, in all
  double max_seconds = 300.0;     // wall-clock budget; the best case so far is kept
  // Called with one line for each accepted step (and the start); default: nothing.
  std::function<void(const std::string&)> report;
  // Polled before every candidate (may be null): when set (Ctrl-C), the reduction stops like a
  // spent budget and the best case so far is returned, marked interrupted.
  const std::atomic<bool>* interrupt = nullptr;
  // For a case with a `file:` side: the shell command that plays a scenario on the system that made
  // it, with {scenario} and {out} where the scenario file and the .safetensors to write go, e.g.
  // "python tools/ecosystem/export.py --backend mamba_ssm {scenario} --out {out}". It runs once per
  // candidate (its output in WORK/<n>/log.txt); a candidate whose export fails is not interesting.
  std::string exporter;
  // Where the candidates' exports go (made if missing); the reduced case's export stays there until
  // the case is saved, so the caller removes it (`mambadiff reduce` does). Default: a folder named
  // for this process under the system's temporary directory.
  std::filesystem::path work_dir;
};

struct ReduceOutcome {
  bool diverges = false;      // whether the input diverges here at all (false: nothing was reduced)
  std::string target_class;   // the divergence class kept
  DivergenceCase reduced;     // the smallest case found (the input, re-observed, if none smaller)
  CaseRun run;                // its replay
  int64_t steps = 0;          // accepted steps
  int64_t candidates = 0;     // replays tried
  bool interrupted = false;   // stopped by ReduceOptions::interrupt
  double seconds = 0.0;
};

// InputError for a case with a `file:` path and no exporter, or for bad case contents.
ReduceOutcome reduce_case(const DivergenceCase& input, const ReduceOptions& options = {});

// "3 ops (2 forward, 4 tokens, longest 3), 1 row, 1 layer" for a scenario run on `layers` layers.
std::string scenario_size(const Scenario& scenario, int64_t layers);

}  // namespace mambadiff
