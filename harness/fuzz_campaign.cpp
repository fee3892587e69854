#include "harness/fuzz_campaign.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "engine/errors.h"
#include "engine/output_file.h"

extern char** environ;

namespace mambadiff {
namespace fs = std::filesystem;

namespace {

constexpr const char* kSignaturePrefix = "mambadiff-fuzz-signature:";
// Frames of the sanitizers, libFuzzer and libc say nothing about where a crash is.
constexpr std::string_view kRuntimeFramePrefixes[] = {"__sanitizer", "__asan", "__ubsan", "__lsan", "__interceptor",
                                                      "__msan", "fuzzer::", "__libc", "_start", "main", "malloc",
                                                      "calloc", "realloc", "free", "operator new", "operator delete",
                                                      "abort", "raise", "__GI_", "std::terminate", "__cxa_"};
// Frames kept in a crash's signature: enough to tell two crashes in one function apart by their
// callers, few enough that a minimized input (which can take a shorter route in) keeps its key.
constexpr std::size_t kSignatureFrames = 3;
// Crash inputs re-run per target after a Ctrl-C (each re-run starts the target: about a second for
// the differential ones); the rest are kept unclassified.
constexpr std::size_t kMaxRerunsInterrupted = 8;

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// ---------------------------------------------------------------------------------------------
// Child processes: a target run in its own process group (so a terminal's Ctrl-C reaches only us
// and we decide what the children get), its stdout and stderr read line by line.

struct ChildResult {
  int exit_code = -1;   // exit status, or 128 + signal
  bool timed_out = false;
  double cpu_s = 0;     // user + system CPU time of the child and the descendants it waited for
  std::string output;   // the last kOutputKept bytes of stdout and stderr
};
constexpr std::size_t kOutputKept = 1 << 20;  // a sanitizer report is a few KiB; a long campaign's log is not kept

// After SIGINT, how long a child gets to exit before SIGKILL.
constexpr double kStopGraceSeconds = 5;

ChildResult run_child(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env,
                      double timeout_s, const std::function<void(std::string_view)>& on_line,
                      const std::atomic<bool>* interrupted) {
  // Everything the child needs is built before fork(): only async-signal-safe calls after it.
  std::vector<std::string> env_strings;
  for (char** e = environ; *e; ++e) {
    const std::string_view entry(*e);
    const bool overridden = std::any_of(extra_env.begin(), extra_env.end(), [&](const std::string& x) {
      return entry.substr(0, entry.find('=') + 1) == std::string_view(x).substr(0, x.find('=') + 1);
    });
    if (!overridden) env_strings.emplace_back(entry);
  }
  env_strings.insert(env_strings.end(), extra_env.begin(), extra_env.end());
  std::vector<char*> envp, args;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv_copy = argv;
  for (auto& s : argv_copy) args.push_back(s.data());
  args.push_back(nullptr);

  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("fuzz: pipe() failed");
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fuzz: fork() failed");
  if (pid == 0) {
    ::setpgid(0, 0);
    ::dup2(fds[1], STDOUT_FILENO);
    ::dup2(fds[1], STDERR_FILENO);
    ::signal(SIGINT, SIG_DFL);
    ::execve(args[0], args.data(), envp.data());
    ::_exit(127);
  }
  ::setpgid(pid, pid);
  ::close(fds[1]);

  ChildResult result;
  std::string pending;
  const auto start = Clock::now();
  bool sent_int = false;
  Clock::time_point int_sent_at;
  auto stop_group = [&](bool timed_out) {
    if (!sent_int) {
      ::kill(-pid, SIGINT);  // libFuzzer stops its jobs and exits on SIGINT
      sent_int = true;
      int_sent_at = Clock::now();
      result.timed_out = timed_out;
    } else if (seconds_since(int_sent_at) > kStopGraceSeconds) {
      // Fork mode waits for its running job; the job's new inputs since its last report are all
      // that SIGKILL loses (the corpus merged so far is on disk).
      ::kill(-pid, SIGKILL);
    }
  };
  for (;;) {
    pollfd p{fds[0], POLLIN, 0};
    const int ready = ::poll(&p, 1, 200);
    if (ready > 0) {
      char buf[65536];
      const ssize_t n = ::read(fds[0], buf, sizeof buf);
      if (n <= 0) break;  // every writer (the target and its fork-mode jobs) has gone
      pending.append(buf, static_cast<std::size_t>(n));
      std::size_t nl;
      while ((nl = pending.find('\n')) != std::string::npos) {
        const std::string line = pending.substr(0, nl);
        if (on_line) on_line(line);
        result.output += line;
        result.output += '\n';
        pending.erase(0, nl + 1);
      }
      if (result.output.size() > 2 * kOutputKept) result.output.erase(0, result.output.size() - kOutputKept);
    }
    if (interrupted && interrupted->load()) stop_group(false);
    if (timeout_s > 0 && seconds_since(start) > timeout_s) stop_group(true);
  }
  ::close(fds[0]);
  result.output += pending;
  int status = 0;
  rusage usage{};
  while (::wait4(pid, &status, 0, &usage) < 0 && errno == EINTR) {
  }
  result.cpu_s = usage.ru_utime.tv_sec + usage.ru_utime.tv_usec * 1e-6 + usage.ru_stime.tv_sec +
                 usage.ru_stime.tv_usec * 1e-6;
  ::kill(-pid, SIGKILL);  // a fork-mode job left behind, if any
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

// One execution of `input` by the target `bin` (libFuzzer's -timeout); UBSan reports get a stack
// so that they can be keyed by it.
ChildResult replay_child(const fs::path& bin, const fs::path& input, const std::vector<std::string>& env,
                         int timeout_s) {
  std::vector<std::string> full_env = env;
  if (!std::getenv("UBSAN_OPTIONS")) full_env.push_back("UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1");
  return run_child({bin.string(), fmt::format("-timeout={}", timeout_s), input.string()}, full_env, timeout_s + 60,
                   nullptr, nullptr);
}

// ---------------------------------------------------------------------------------------------
// Parsing.

// The unsigned integer right after `key` in `line`, if the key is there.
std::optional<std::uint64_t> number_after(std::string_view line, std::string_view key) {
  const auto at = line.find(key);
  if (at == std::string_view::npos) return std::nullopt;
  std::size_t i = at + key.size();
  while (i < line.size() && line[i] == ' ') ++i;
  if (i >= line.size() || !std::isdigit(static_cast<unsigned char>(line[i]))) return std::nullopt;
  std::uint64_t v = 0;
  while (i < line.size() && std::isdigit(static_cast<unsigned char>(line[i]))) v = v * 10 + (line[i++] - '0');
  return v;
}

std::vector<std::string> split(std::string_view s, char sep) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  for (;;) {
    const auto at = s.find(sep, start);
    parts.emplace_back(s.substr(start, at == std::string_view::npos ? std::string_view::npos : at - start));
    if (at == std::string_view::npos) return parts;
    start = at + 1;
  }
}

std::string trim(std::string_view s) {
  const auto b = s.find_first_not_of(" \t\r");
  if (b == std::string_view::npos) return "";
  return std::string(s.substr(b, s.find_last_not_of(" \t\r") - b + 1));
}

// The function of one symbolized frame ("    #4 0x55c3 in ns::f(int) /src/a.cpp:7:11"), without
// its parameter list; empty for a frame without a symbol or one of the runtime's.
std::string frame_function(std::string_view line) {
  const auto in = line.find(" in ");
  if (in == std::string_view::npos) return "";
  std::string_view f = line.substr(in + 4);
  // The location follows the function after a space: " /path/file.cpp:7:11" or " (/bin/x+0x43)".
  for (const std::string_view location : {std::string_view(" /"), std::string_view(" (")}) {
    const auto at = f.find(location);
    if (at != std::string_view::npos) f = f.substr(0, at);
  }
  if (f.rfind("operator()", 0) != 0) f = f.substr(0, f.find('('));
  for (const auto prefix : kRuntimeFramePrefixes) {
    if (f.rfind(prefix, 0) == 0) return "";
  }
  return std::string(f);
}

std::string crash_kind(std::string_view output) {
  static const std::pair<std::string_view, std::string_view> kinds[] = {
      {"ERROR: LeakSanitizer: detected memory leaks", "memory leak"},
      {"ERROR: libFuzzer: timeout", "timeout"},
      {"ERROR: libFuzzer: out-of-memory", "out-of-memory"},
      {"ERROR: libFuzzer: fuzz target exited", "target exited"},
      {"ERROR: libFuzzer: deadly signal", "deadly signal"},
      {": runtime error: ", "runtime error"},
  };
  const auto asan = output.find("ERROR: AddressSanitizer: ");
  if (asan != std::string_view::npos) {
    const auto rest = output.substr(asan + std::string_view("ERROR: AddressSanitizer: ").size());
    return "asan " + std::string(rest.substr(0, rest.find_first_of(" \n")));
  }
  for (const auto& [marker, kind] : kinds) {
    if (output.find(marker) != std::string_view::npos) return std::string(kind);
  }
  return "crash";
}

}  // namespace

const std::vector<std::string>& fuzz_target_names() {
  static const std::vector<std::string> names = {"scan_diff",    "model_script",   "parse_safetensors",
                                                 "parse_config", "parse_scenario", "parse_case"};
  return names;
}

namespace {
fs::path repository_of_binary() {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return fs::current_path();
  return exe.parent_path().parent_path();  // <repo>/<build folder>/mambadiff
}
}  // namespace

fs::path default_fuzz_targets_dir() { return repository_of_binary() / "build-fuzz" / "fuzz"; }
fs::path default_fuzz_seeds_dir() { return repository_of_binary() / "corpus" / "fuzz"; }

std::optional<LibFuzzerProgress> parse_libfuzzer_progress(std::string_view line) {
  if (line.empty() || line[0] != '#' || line.size() < 2 || !std::isdigit(static_cast<unsigned char>(line[1]))) {
    return std::nullopt;
  }
  LibFuzzerProgress p;
  p.execs = *number_after(line, "#");
  const auto cov = number_after(line, " cov: ");
  if (!cov) return std::nullopt;  // "#N\tINITED" without coverage, "#N\tDONE" lines: not progress
  p.coverage = *cov;
  p.features = number_after(line, " ft: ").value_or(0);
  p.corpus = number_after(line, " corp: ").value_or(0);
  const auto counts_at = line.find("oom/timeout/crash: ");
  if (counts_at != std::string_view::npos) {
    const auto counts = split(line.substr(counts_at + 19, line.find(' ', counts_at + 19) - counts_at - 19), '/');
    for (const auto& c : counts) p.crashes += std::strtoull(c.c_str(), nullptr, 10);
  }
  if (const auto t = number_after(line, " time: ")) p.time_s = static_cast<double>(*t);
  return p;
}

CrashClassification classify_crash_output(std::string_view output) {
  CrashClassification c;
  const auto sig = output.find(kSignaturePrefix);
  if (sig != std::string_view::npos) {
    const auto rest = output.substr(sig + std::string_view(kSignaturePrefix).size());
    c.kind = "divergence";
    c.signature = trim(rest.substr(0, rest.find('\n')));
    const auto f = split(c.signature, '|');
    c.first_divergence = f.size() == 5 ? fmt::format("op {}, layer {}, tensor {}, branch {}", f[1], f[2], f[3], f[4])
                                       : c.signature;
    return c;
  }
  c.kind = crash_kind(output);
  // The first stack after the report: its top frames outside the runtimes.
  std::vector<std::string> frames;
  std::istringstream lines{std::string(output)};
  std::string line;
  bool in_stack = false;
  while (std::getline(lines, line) && frames.size() < kSignatureFrames) {
    const std::string t = trim(line);
    const bool is_frame = t.size() > 1 && t[0] == '#' && std::isdigit(static_cast<unsigned char>(t[1])) &&
                          t.find(" 0x") != std::string::npos;
    if (is_frame) {
      in_stack = true;
      if (auto f = frame_function(t); !f.empty()) frames.push_back(f);
    } else if (in_stack && frames.size() > 0) {
      break;
    }
  }
  if (frames.empty()) {
    // No symbolized frames (a UBSan report without a stack): its source location is the key.
    const auto at = output.find(": runtime error: ");
    if (at != std::string_view::npos) {
      const auto line_start = output.rfind('\n', at);
      frames.push_back(trim(output.substr(line_start == std::string_view::npos ? 0 : line_start + 1,
                                          at - (line_start == std::string_view::npos ? 0 : line_start + 1))));
    }
  }
  std::string joined;
  for (const auto& f : frames) joined += (joined.empty() ? "" : " < ") + f;
  c.signature = joined.empty() ? "no stack" : joined;
  const auto summary = output.find("SUMMARY: ");
  c.first_divergence = summary != std::string_view::npos
                           ? trim(output.substr(summary + 9, output.find('\n', summary) - summary - 9))
                           : c.kind;
  return c;
}

void validate_fuzz_campaign(const FuzzCampaignOptions& o) {
  if (!std::isfinite(o.time_s) || o.time_s <= 0) {
    throw InputError(fmt::format("fuzz: --time {} is not a positive number of seconds", o.time_s));
  }
  if (o.jobs <= 0) throw InputError(fmt::format("fuzz: --jobs {} is not a positive number of jobs", o.jobs));
  const auto& names = fuzz_target_names();
  if (o.target && std::find(names.begin(), names.end(), *o.target) == names.end()) {
    throw InputError(fmt::format("fuzz: --target '{}' is not a fuzz target (one of: {})", *o.target,
                                 fmt::join(names, ", ")));
  }
  for (const auto& name : names) {
    if (o.target && *o.target != name) continue;
    const fs::path bin = o.targets_dir / name;
    if (!fs::is_regular_file(bin) || ::access(bin.c_str(), X_OK) != 0) {
      throw InputError(fmt::format("fuzz: target build {} is missing (build it with `make fuzz` or pass --targets-dir)",
                                   bin.string()));
    }
  }
  std::error_code ec;
  fs::create_directories(o.out_dir, ec);
  const fs::path probe = o.out_dir / fmt::format(".mambadiff-write-probe.{}", ::getpid());
  {
    std::ofstream f(probe);
    f << "probe";
    if (ec || !f) {
      fs::remove(probe, ec);
      throw InputError(fmt::format("fuzz: output folder {} cannot be written", o.out_dir.string()));
    }
  }
  fs::remove(probe, ec);
}

namespace {

std::uint64_t count_files(const fs::path& dir) {
  std::error_code ec;
  std::uint64_t n = 0;
  for (const auto& e : fs::directory_iterator(dir, ec)) n += e.is_regular_file();
  return n;
}

// Replaces `dest` by the complete folder `fresh` (same file system): the old one is moved aside
// first and removed only once the new one is in place.
void swap_in_folder(const fs::path& fresh, const fs::path& dest) {
  const fs::path old = dest.string() + ".old";
  std::error_code ec;
  fs::remove_all(old, ec);
  if (fs::exists(dest)) fs::rename(dest, old);
  fs::rename(fresh, dest);
  fs::remove_all(old, ec);
}

std::string short_hash(const std::string& s) {
  std::uint64_t h = 1469598103934665603ull;  // FNV-1a: stable across runs, so a finding keeps its folder name
  for (unsigned char ch : s) h = (h ^ ch) * 1099511628211ull;
  return fmt::format("{:08x}", static_cast<std::uint32_t>(h ^ (h >> 32)));
}

nlohmann::json finding_json(const FuzzFinding& f) {
  return {{"target", f.target},
          {"kind", f.crash.kind},
          {"signature", f.crash.signature},
          {"first_divergence", f.crash.first_divergence},
          {"case", f.case_dir.empty() ? nlohmann::json(nullptr) : nlohmann::json(f.case_dir.string())},
          {"input", (f.dir / "input").string()},
          {"input_bytes", f.input_bytes},
          {"duplicates", f.duplicates},
          {"dir", f.dir.string()}};
}

struct CrashInput {
  fs::path file;
  std::uintmax_t size;
  std::string prefix;  // libFuzzer's artifact prefix: crash, timeout, oom, leak, slow-unit
};

class TargetCampaign {
 public:
  TargetCampaign(const FuzzCampaignOptions& o, const std::string& name, double share_s, FuzzCampaignResult& result)
      : o_(o), name_(name), share_s_(share_s), result_(result), bin_(o.targets_dir / name),
        work_(o.out_dir / ".work" / name), corpus_(o.out_dir / "corpus" / name) {}

  void run() {
    stats_.name = name_;
    std::error_code ec;
    fs::remove_all(work_, ec);
    fs::create_directories(work_ / "new", ec);
    fs::create_directories(work_ / "artifacts", ec);
    fs::create_directories(o_.out_dir / "findings", ec);
    fuzz();
    // A stopped-at-first-finding run (the kill matrix's) has its answer; its corpus, full of inputs
    // that crash the mutant, would cost a restart of the merge per input.
    if (!(o_.stop_at_first_finding && stats_.first_finding_s)) merge();
    collect_findings();
    result_.targets.push_back(stats_);
    fs::remove_all(work_, ec);
  }

 private:
  std::vector<std::string> corpus_inputs() const {
    std::vector<std::string> dirs;
    if (fs::is_directory(corpus_)) dirs.push_back(corpus_.string());
    const fs::path seeds = o_.seeds_dir / name_;
    if (!o_.seeds_dir.empty() && fs::is_directory(seeds)) {
      dirs.push_back(seeds.string());
    } else if (!warned_no_seeds_) {
      // Said once per target, not silently: a campaign from an empty corpus finds less, later.
      fmt::print(stderr, "fuzz {}: no seed corpus at {}: starting from an empty corpus\n", name_, seeds.string());
      warned_no_seeds_ = true;
    }
    return dirs;
  }

  std::vector<std::string> common_flags() const {
    std::vector<std::string> flags = {fmt::format("-timeout={}", o_.timeout_s)};
    for (const fs::path& dict : {o_.seeds_dir / (name_ + ".dict"), o_.targets_dir / (name_ + ".dict")}) {
      if (!o_.seeds_dir.empty() && fs::is_regular_file(dict)) {
        flags.push_back("-dict=" + dict.string());
        break;
      }
    }
    return flags;
  }

  void fuzz() {
    // One job stopping at its first finding (the kill matrix) runs libFuzzer in one process: fork
    // mode's start (a crash-resistant pass over the seeds, restarted at every seed that crashes the
    // mutant) would be most of the time to find.
    const bool one_process = o_.jobs == 1 && o_.stop_at_first_finding;
    std::vector<std::string> argv = {bin_.string(), fmt::format("-max_total_time={}", std::max(1L, std::lround(share_s_))),
                                     "-artifact_prefix=" + (work_ / "artifacts").string() + "/",
                                     "-print_final_stats=1"};
    if (!one_process) argv.insert(argv.begin() + 1, fmt::format("-fork={}", o_.jobs));
    if (!o_.stop_at_first_finding) {
      argv.insert(argv.end(), {"-ignore_crashes=1", "-ignore_timeouts=1", "-ignore_ooms=1"});
    }
    for (auto& f : common_flags()) argv.push_back(f);
    argv.push_back((work_ / "new").string());  // libFuzzer writes new inputs into the first folder
    for (auto& d : corpus_inputs()) argv.push_back(d);

    const auto start = Clock::now();
    auto last_report = Clock::now() - std::chrono::hours(1);
    auto on_line = [&](std::string_view line) {
      if (const auto n = number_after(line, "stat::number_of_executed_units:")) stats_.execs = std::max(stats_.execs, *n);
      const bool crash_report = line.find(kSignaturePrefix) != std::string_view::npos ||
                                line.find("ERROR: libFuzzer: ") != std::string_view::npos ||
                                line.find("ERROR: AddressSanitizer: ") != std::string_view::npos ||
                                line.find("ERROR: LeakSanitizer: ") != std::string_view::npos ||
                                line.find(": runtime error: ") != std::string_view::npos;
      if (one_process && crash_report && !stats_.first_finding_s) {
        stats_.first_finding_s = seconds_since(start);  // executions: the final count, once it comes
      }
      const auto p = parse_libfuzzer_progress(line);
      if (!p) return;
      stats_.execs = std::max(stats_.execs, p->execs);
      stats_.coverage = std::max(stats_.coverage, p->coverage);
      const bool new_crash = p->crashes > stats_.crash_inputs;
      stats_.crash_inputs = std::max(stats_.crash_inputs, p->crashes);
      const double t = seconds_since(start);
      if (p->crashes > 0 && !stats_.first_finding_s) {
        stats_.first_finding_s = t;
        stats_.first_finding_execs = p->execs;
      }
      if (o_.on_progress && (seconds_since(last_report) >= 1 || new_crash)) {
        last_report = Clock::now();
        o_.on_progress(new_crash, fmt::format("fuzz {}: {} execs, {:.0f} exec/s, cov {}, corpus {}, crash inputs {}, {:.0f}/{:.0f} s",
                                   name_, p->execs, t > 0 ? p->execs / t : 0.0, p->coverage, p->corpus, p->crashes,
                                   t, share_s_));
      }
    };
    // libFuzzer stops itself at -max_total_time; the margin covers its start and the last job.
    const auto child = run_child(argv, {}, share_s_ + 60 + o_.timeout_s, on_line, o_.interrupted);
    stats_.fuzz_time_s = seconds_since(start);
    stats_.fuzz_cpu_s = child.cpu_s;
    stats_.execs_per_sec = stats_.fuzz_time_s > 0 ? stats_.execs / stats_.fuzz_time_s : 0;
    if (one_process && stats_.first_finding_s) stats_.first_finding_execs = stats_.execs;  // it stopped there
    if (o_.stop_at_first_finding && !stats_.first_finding_s && child.exit_code != 0 && !child.timed_out &&
        !(o_.interrupted && o_.interrupted->load())) {
      // Without -ignore_crashes fork mode exits at the first crash, possibly before a progress line.
      stats_.first_finding_s = stats_.fuzz_time_s;
      stats_.first_finding_execs = stats_.execs;
    }
  }

  void merge() {
    const fs::path merged = work_ / "merged";
    std::error_code ec;
    fs::create_directories(merged, ec);
    std::vector<std::string> argv = {bin_.string(), "-merge=1", fmt::format("-timeout={}", o_.timeout_s),
                                     "-merge_control_file=" + (work_ / "merge.control").string(), merged.string(),
                                     (work_ / "new").string()};
    for (auto& d : corpus_inputs()) argv.push_back(d);
    // Not interruptible: a Ctrl-C still gets its corpus merged. Bounded all the same.
    const auto child = run_child(argv, {}, std::max(120.0, share_s_), nullptr, nullptr);
    if (child.exit_code != 0 || child.timed_out) {
      result_.warnings.push_back(fmt::format("fuzz {}: corpus merge failed (exit {}); {} kept as it was", name_,
                                             child.exit_code, corpus_.string()));
      stats_.corpus = count_files(corpus_);
      return;
    }
    fs::create_directories(corpus_.parent_path(), ec);
    swap_in_folder(merged, corpus_);
    stats_.corpus = count_files(corpus_);
  }

  ChildResult replay(const fs::path& input, const std::vector<std::string>& env) const {
    return replay_child(bin_, input, env, o_.timeout_s);
  }

  void collect_findings() {
    std::vector<CrashInput> inputs;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(work_ / "artifacts", ec)) {
      const std::string file = e.path().filename().string();
      const auto dash = file.find('-');
      if (!e.is_regular_file() || dash == std::string::npos) continue;
      inputs.push_back({e.path(), e.file_size(), file.substr(0, dash)});
    }
    std::sort(inputs.begin(), inputs.end(), [](const CrashInput& a, const CrashInput& b) {
      return a.size != b.size ? a.size < b.size : a.file < b.file;
    });
    stats_.crash_inputs = std::max<std::uint64_t>(stats_.crash_inputs, inputs.size());
    struct Group {
      CrashClassification crash;
      fs::path input;  // the smallest
      std::string report;
      std::uint64_t count = 0;
    };
    std::map<std::string, Group> groups;
    std::vector<std::string> order;
    std::size_t reruns = 0;
    for (const auto& in : inputs) {
      CrashClassification c;
      std::string report;
      if (in.prefix == "timeout" || in.prefix == "oom" || in.prefix == "slow") {
        // Re-running a hang costs its whole timeout: keyed by what libFuzzer called it.
        c.kind = in.prefix == "oom" ? "out-of-memory" : in.prefix == "timeout" ? "timeout" : "slow unit";
        c.signature = name_;
        c.first_divergence = fmt::format("{} on an input of {} bytes", c.kind, in.size);
      } else {
        const bool interrupted = o_.interrupted && o_.interrupted->load();
        if (reruns >= (interrupted ? kMaxRerunsInterrupted : o_.max_reruns)) {
          keep_unclassified(in.file);
          continue;
        }
        ++reruns;
        const auto child = replay(in.file, {});
        if (child.exit_code == 0) continue;  // not reproducible alone (state of an earlier input): not a finding
        report = child.output;
        c = classify_crash_output(child.output);
      }
      auto [it, fresh] = groups.try_emplace(c.key());
      if (fresh) {
        it->second = {c, in.file, report, 0};
        order.push_back(c.key());
      }
      ++it->second.count;
    }
    for (const auto& key : order) write_finding(groups[key].crash, groups[key].input, groups[key].report,
                                                groups[key].count);
  }

  // A crash input over the re-run budget: kept as it is in OUT/unclassified/<target>/ (its name is
  // libFuzzer's kind and the input's SHA-1), never dropped.
  void keep_unclassified(const fs::path& input) {
    const fs::path dir = o_.out_dir / "unclassified" / name_;
    fs::create_directories(dir);
    const fs::path tmp = dir / ("." + input.filename().string() + ".tmp");
    fs::copy_file(input, tmp, fs::copy_options::overwrite_existing);
    fs::rename(tmp, dir / input.filename());
    ++stats_.unclassified;
  }

  void write_finding(const CrashClassification& crash, fs::path input, std::string report, std::uint64_t count) {
    const std::string id = name_ + "-" + short_hash(crash.key());
    const fs::path tmp = work_ / ("finding-" + id);
    std::error_code ec;
    fs::remove_all(tmp, ec);
    fs::create_directories(tmp);
    const bool interrupted = o_.interrupted && o_.interrupted->load();
    const bool replayable = crash.kind != "timeout" && crash.kind != "out-of-memory" && crash.kind != "slow unit";
    if (replayable && !interrupted && o_.minimize_s > 0) {
      // Minimized, and kept only if it is still the same finding.
      const fs::path minimized = tmp / "input.min";
      run_child({bin_.string(), "-minimize_crash=1", fmt::format("-max_total_time={}", std::lround(o_.minimize_s)),
                 fmt::format("-timeout={}", o_.timeout_s), "-exact_artifact_path=" + minimized.string(),
                 input.string()},
                {}, o_.minimize_s + 60, nullptr, nullptr);
      if (fs::is_regular_file(minimized)) {
        const auto again = replay(minimized, {});
        if (again.exit_code != 0 && classify_crash_output(again.output).key() == crash.key()) {
          input = minimized;
          report = again.output;
        }
      }
    }
    fs::copy_file(input, tmp / "input", fs::copy_options::overwrite_existing);
    fs::remove(tmp / "input.min", ec);
    FuzzFinding f{name_, crash, o_.out_dir / "findings" / id, {}, fs::file_size(tmp / "input"), count};
    if (crash.kind == "divergence") {
      // The target writes the case into a new subfolder of MAMBADIFF_FUZZ_CASE_DIR.
      const fs::path cases = work_ / ("cases-" + id);
      fs::remove_all(cases, ec);
      fs::create_directories(cases);
      const auto child = replay(tmp / "input", {"MAMBADIFF_FUZZ_CASE_DIR=" + cases.string()});
      report = child.output;
      for (const auto& e : fs::directory_iterator(cases, ec)) {
        if (e.is_directory() && fs::is_regular_file(e.path() / "case.json")) {
          fs::rename(e.path(), tmp / "case");
          f.case_dir = f.dir / "case";
          break;
        }
      }
      fs::remove_all(cases, ec);
      if (f.case_dir.empty()) {
        result_.warnings.push_back(fmt::format("fuzz {}: the target wrote no case for finding {}", name_, id));
      }
    }
    write_text_atomically(tmp / "report.txt", report);
    write_text_atomically(tmp / "finding.json", finding_json(f).dump(2) + "\n");
    fs::create_directories(f.dir.parent_path());
    swap_in_folder(tmp, f.dir);
    result_.findings.push_back(f);
    ++stats_.findings;
  }

  const FuzzCampaignOptions& o_;
  const std::string name_;
  const double share_s_;
  FuzzCampaignResult& result_;
  const fs::path bin_, work_, corpus_;
  FuzzTargetStats stats_;
  mutable bool warned_no_seeds_ = false;
};

}  // namespace

std::optional<CrashClassification> replay_fuzz_input(const fs::path& target_binary, const fs::path& input,
                                                     const std::vector<std::string>& env, int timeout_s) {
  const auto child = replay_child(target_binary, input, env, timeout_s);
  if (child.exit_code == 0) return std::nullopt;
  return classify_crash_output(child.output);
}

FuzzCampaignResult run_fuzz_campaign(const FuzzCampaignOptions& options) {
  validate_fuzz_campaign(options);
  std::vector<std::string> targets;
  for (const auto& n : fuzz_target_names()) {
    if (!options.target || *options.target == n) targets.push_back(n);
  }
  FuzzCampaignResult result;
  // An equal share of fuzzing time each, fixed up front: libFuzzer's start (loading the seeds, on a
  // busy machine a minute) and the merge come on top, and must not eat the later targets' shares.
  const double share = std::max(1.0, options.time_s / static_cast<double>(targets.size()));
  for (const auto& target : targets) {
    const bool interrupted = options.interrupted && options.interrupted->load();
    TargetCampaign(options, target, interrupted ? 1.0 : share, result).run();
  }
  std::error_code ec;
  fs::remove_all(options.out_dir / ".work", ec);
  result.interrupted = options.interrupted && options.interrupted->load();
  return result;
}

nlohmann::json fuzz_campaign_json(const FuzzCampaignResult& r, const FuzzCampaignOptions& o) {
  nlohmann::json targets = nlohmann::json::array(), findings = nlohmann::json::array();
  auto opt = [](const auto& v) { return v ? nlohmann::json(*v) : nlohmann::json(nullptr); };
  for (const auto& t : r.targets) {
    targets.push_back({{"name", t.name},
                       {"execs", t.execs},
                       {"execs_per_sec", t.execs_per_sec},
                       {"fuzz_time_s", t.fuzz_time_s},
                       {"fuzz_cpu_s", t.fuzz_cpu_s},
                       {"corpus", t.corpus},
                       {"coverage", t.coverage},
                       {"crash_inputs", t.crash_inputs},
                       {"unclassified_crash_inputs", t.unclassified},
                       {"findings", t.findings},
                       {"first_finding_s", opt(t.first_finding_s)},
                       {"first_finding_execs", opt(t.first_finding_execs)}});
  }
  for (const auto& f : r.findings) findings.push_back(finding_json(f));
  const char* mutant = std::getenv("MAMBADIFF_FUZZ_MUTANT");
  return {{"format", "mambadiff.fuzz.v1"},
          {"time_s", o.time_s},
          {"jobs", o.jobs},
          {"mutant", mutant ? nlohmann::json(mutant) : nlohmann::json(nullptr)},
          {"interrupted", r.interrupted},
          {"warnings", r.warnings},
          {"targets", targets},
          {"findings", findings}};
}

std::string fuzz_campaign_table(const FuzzCampaignResult& r) {
  std::string s = fmt::format("{:<18} {:>12} {:>10} {:>8} {:>8} {:>8} {:>8}\n", "target", "execs", "exec/s", "cov",
                              "corpus", "crashes", "findings");
  for (const auto& t : r.targets) {
    s += fmt::format("{:<18} {:>12} {:>10.0f} {:>8} {:>8} {:>8} {:>8}\n", t.name, t.execs, t.execs_per_sec,
                     t.coverage, t.corpus, t.crash_inputs, t.findings);
  }
  for (const auto& f : r.findings) {
    s += fmt::format("finding {} [{}] {}\n  {}\n  {}\n", f.target, f.crash.kind, f.crash.signature,
                     f.crash.first_divergence, (f.case_dir.empty() ? f.dir / "input" : f.case_dir).string());
  }
  for (const auto& w : r.warnings) s += "warning: " + w + "\n";
  if (r.interrupted) s += "interrupted: the corpus was merged and the findings so far written\n";
  return s;
}

}  // namespace mambadiff
