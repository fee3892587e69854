// `mambadiff fuzz`: a campaign over the libFuzzer targets of fuzz/ (issue 10 §4).
//
// Each target gets its share of the time budget in libFuzzer's fork mode (-fork=JOBS), with crashes,
// timeouts and OOMs ignored so that one finding does not end the campaign; the crash inputs land in
// a scratch folder. Afterwards, per target:
//   * the corpus is merged (-merge=1) into OUT/corpus/<target> (merged into a fresh folder, then
//     swapped in: the old corpus stays whole until the new one is complete);
//   * every crash input is re-run once and keyed: by its numeric signature when the target printed
//     `mambadiff-fuzz-signature: target|op|layer|tensor|branch` (a differential finding), otherwise
//     by the sanitizer's report kind and top frames of its stack (a crash);
//   * crash inputs over the re-run budget (max_reruns, 8 after a Ctrl-C) are copied unclassified
//     into OUT/unclassified/<target>/;
//   * one input per key is minimized (-minimize_crash=1, a small budget; kept only if the minimized
//     input still has the same key) and written under OUT/findings/<target>-<key hash>/:
//       input           the (minimized) bytes; `build-fuzz/fuzz/<target> input` replays it
//       case/           differential findings: the mambadiff.case.v1 case the target wrote when
//                       re-run with MAMBADIFF_FUZZ_CASE_DIR (`mambadiff repro` / `reduce` take it)
//       report.txt      the target's output on the input (the signature line or the stack)
//       finding.json    the finding's entry of the summary
//     built in OUT/.work and renamed into place, so a finding folder is whole or absent.
// The process environment passes through to the targets (MAMBADIFF_FUZZ_MUTANT in particular).
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace mambadiff {

// The targets of fuzz/ (COMMON.md "The fuzz interface"), in campaign order.
const std::vector<std::string>& fuzz_target_names();

// build-fuzz/fuzz and corpus/fuzz of the repository the running binary was built in: resolved from
// the binary's own location (/proc/self/exe is <repo>/<build>/mambadiff), not a configure-time path.
std::filesystem::path default_fuzz_targets_dir();
std::filesystem::path default_fuzz_seeds_dir();

// One progress line of libFuzzer's fork mode, e.g.
//   #103035: cov: 15 ft: 84 corp: 24 exec/s 0 oom/timeout/crash: 0/0/52 time: 8s job: 53 dft_time: 0
// or of its ordinary mode (`#4096 pulse cov: 15 ft: 84 corp: 24/120b ... exec/s: 2048 ...`).
struct LibFuzzerProgress {
  std::uint64_t execs = 0;
  std::uint64_t coverage = 0;  // "cov:": edges (inline 8-bit counters and extra counters) reached
  std::uint64_t features = 0;  // "ft:"
  std::uint64_t corpus = 0;    // "corp:": inputs in the in-memory corpus
  std::uint64_t crashes = 0;   // fork mode's oom/timeout/crash total; 0 in the ordinary mode
  std::optional<double> time_s;  // fork mode's "time:"
};
std::optional<LibFuzzerProgress> parse_libfuzzer_progress(std::string_view line);

// What one crash input did when re-run: a differential divergence (the signature line) or a crash
// keyed by its report kind and top frames. `key` is what findings are deduplicated by.
struct CrashClassification {
  std::string kind;       // "divergence", or the sanitizer's kind: "SEGV", "heap-buffer-overflow",
                          // "runtime error", "memory leak", "deadly signal", "timeout", "out-of-memory"
  std::string signature;  // divergence: "target|op|layer|tensor|branch"; crash: kind + top frames
  std::string first_divergence;  // divergence: "op X, layer L, tensor T, branch B"; crash: summary
  std::string key() const { return kind == "divergence" ? signature : kind + "@" + signature; }
};
// `output` is the target's stdout and stderr on the input; `target` names it for crashes.
CrashClassification classify_crash_output(std::string_view output);

// One execution of `input` by the libFuzzer binary `target_binary`, with `env` added to ours
// ("NAME=value"; "NAME=" clears one): nullopt when it runs clean, else what it found.
std::optional<CrashClassification> replay_fuzz_input(const std::filesystem::path& target_binary,
                                                     const std::filesystem::path& input,
                                                     const std::vector<std::string>& env, int timeout_s);

struct FuzzCampaignOptions {
  double time_s = 0;         // the whole budget; each target gets an equal share of fuzzing time
  int jobs = 0;              // -fork=jobs
  std::filesystem::path out_dir;
  std::optional<std::string> target;  // one target; all of fuzz_target_names() when empty
  std::filesystem::path targets_dir;  // where <target> binaries are
  std::filesystem::path seeds_dir;    // corpus/fuzz: <target>/ seeds and <target>.dict, if present
  double minimize_s = 10;   // -minimize_crash budget per finding; 0: findings are kept unminimized
  int timeout_s = 25;       // libFuzzer -timeout: a single input running longer is a finding
  std::size_t max_reruns = 48;  // crash inputs re-run per target to classify them, smallest first
  bool stop_at_first_finding = false;  // kill matrix: the target stops at its first crash
  // Called with a one-line progress message at most once a second, and at once (`new_crash`) when
  // libFuzzer reports more crash inputs than before.
  std::function<void(bool new_crash, const std::string& line)> on_progress;
  const std::atomic<bool>* interrupted = nullptr;  // set by the caller's SIGINT handler
};

struct FuzzTargetStats {
  std::string name;
  std::uint64_t execs = 0;
  double execs_per_sec = 0;
  double fuzz_time_s = 0;
  // CPU seconds libFuzzer and its fork-mode jobs used: the time "on one core" on a shared machine.
  double fuzz_cpu_s = 0;
  std::uint64_t corpus = 0;     // inputs in OUT/corpus/<target> after the merge
  std::uint64_t coverage = 0;   // libFuzzer's last "cov:"
  std::uint64_t crash_inputs = 0;  // crash inputs libFuzzer saved (before deduplication)
  std::uint64_t findings = 0;      // distinct findings
  std::optional<double> first_finding_s;          // fuzzing time until the first crash input
  std::optional<std::uint64_t> first_finding_execs;  // executions until then (fork-mode granularity)
  std::uint64_t unclassified = 0;  // crash inputs over max_reruns: kept in OUT/unclassified/<target>/
};

struct FuzzFinding {
  std::string target;
  CrashClassification crash;
  std::filesystem::path dir;    // OUT/findings/<id>
  std::filesystem::path case_dir;  // dir/case for a divergence whose case was written; else empty
  std::uint64_t input_bytes = 0;
  std::uint64_t duplicates = 0;  // crash inputs with the same key
};

struct FuzzCampaignResult {
  std::vector<FuzzTargetStats> targets;
  std::vector<FuzzFinding> findings;
  bool interrupted = false;
  std::vector<std::string> warnings;  // e.g. a merge that failed (the old corpus kept)
};

// Throws InputError naming the fault: non-positive or non-finite time, non-positive jobs, an
// unknown target, a target binary missing or not executable, an output folder that cannot be
// created or written.
void validate_fuzz_campaign(const FuzzCampaignOptions& options);

// Validates, then runs the campaign. Writes OUT/corpus/, OUT/findings/; removes OUT/.work at the end.
FuzzCampaignResult run_fuzz_campaign(const FuzzCampaignOptions& options);

// {"targets": [{"name", "execs", "execs_per_sec", "corpus", "coverage", "findings", ...}],
//  "findings": [{"target", "signature", "case", "first_divergence", "kind", ...}], "interrupted"}
nlohmann::json fuzz_campaign_json(const FuzzCampaignResult& result, const FuzzCampaignOptions& options);
// The summary table printed at the end.
std::string fuzz_campaign_table(const FuzzCampaignResult& result);

}  // namespace mambadiff
