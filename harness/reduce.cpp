#include "harness/reduce.h"

#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <set>

#include "engine/errors.h"
#include "harness/path_registry.h"
#include "harness/scenario_runner.h"

namespace mambadiff {

namespace {

using Clock = std::chrono::steady_clock;

struct Candidate {
  std::vector<ScenarioOp> ops;
  int64_t layers = 1;
};

int64_t total_tokens(const std::vector<ScenarioOp>& ops) {
  int64_t n = 0;
  for (const auto& op : ops)
    if (op.kind == OpKind::kForward) n += op.tokens.size(1);
  return n;
}

bool has_forward(const std::vector<ScenarioOp>& ops) {
  return std::any_of(ops.begin(), ops.end(), [](const ScenarioOp& op) { return op.kind == OpKind::kForward; });
}

// Drops ops[i] for i in `drop`, and with a dropped snapshot the restores that would then name a
// snapshot not taken before them.
std::vector<ScenarioOp> without(const std::vector<ScenarioOp>& ops, const std::set<size_t>& drop) {
  std::vector<ScenarioOp> out;
  std::set<std::string> taken;
  for (size_t i = 0; i < ops.size(); ++i) {
    if (drop.count(i)) continue;
    const ScenarioOp& op = ops[i];
    if (op.kind == OpKind::kSnapshot) taken.insert(op.name);
    if (op.kind == OpKind::kRestore && !taken.count(op.name)) continue;
    out.push_back(op);
  }
  return out;
}

class Reducer {
 public:
  Reducer(const DivergenceCase& input, const ReduceOptions& opt)
      : input_(input), opt_(opt), full_(Mamba2Checkpoint::load(input.scenario.model_dir)), t0_(Clock::now()) {}

  ReduceOutcome run() {
    ReduceOutcome out;
    best_ = {input_.scenario.ops, input_.model_layers};
    if (best_.layers > full_.config.num_hidden_layers) {
      throw InputError(fmt::format("{}: key 'model_layers': {} but the model has {} layers",
                                   (input_.dir / "case.json").string(), best_.layers, full_.config.num_hidden_layers));
    }
    best_run_ = replay(best_);
    out.diverges = !best_run_.comparison.agree;
    target_ = divergence_class(best_run_.comparison);
    out.target_class = target_;
    if (out.diverges) {
      say(fmt::format("reduce: start: {}: diverges ({}) at {}", scenario_size(with_ops(best_.ops), best_.layers), target_,
                      describe(*best_run_.comparison.first_divergence)));
      for (bool progress = true; progress && !out_of_budget();) {
        progress = false;
        progress |= pass_layers();
        progress |= pass_ops();
        progress |= pass_rows();
        progress |= pass_tokens();
        progress |= pass_values();
      }
      if (interrupted()) {
        say(fmt::format("reduce: interrupted after {} candidates; keeping the best so far", tried_));
      } else if (out_of_budget()) {
        say(fmt::format("reduce: budget spent after {} candidates; keeping the best so far", tried_));
      }
    }
    out.reduced = input_;
    out.reduced.scenario = with_ops(best_.ops);
    out.reduced.model_layers = best_.layers;
    out.reduced.observe(best_run_);
    out.run = best_run_;
    out.steps = steps_;
    out.candidates = tried_;
    out.interrupted = interrupted();
    out.seconds = std::chrono::duration<double>(Clock::now() - t0_).count();
    return out;
  }

 private:
  Scenario with_ops(const std::vector<ScenarioOp>& ops) const {
    Scenario s = input_.scenario;
    s.ops = ops;
    return s;
  }

  const Mamba2Checkpoint& checkpoint(int64_t layers) {
    auto it = truncated_.find(layers);
    if (it == truncated_.end()) {
      it = truncated_.emplace(layers, layers == full_.config.num_hidden_layers ? full_ : full_.first_layers(layers)).first;
    }
    return it->second;
  }

  CaseRun replay(const Candidate& c) {
    return run_paths(with_ops(c.ops), checkpoint(c.layers), input_.path_a, input_.path_b, input_.tolerance);
  }

  bool interrupted() const { return opt_.interrupt && opt_.interrupt->load(); }

  bool out_of_budget() const {
    return interrupted() || tried_ >= opt_.max_candidates ||
           std::chrono::duration<double>(Clock::now() - t0_).count() >= opt_.max_seconds;
  }

  void say(const std::string& line) const {
    if (opt_.report) opt_.report(line);
  }

  // Replays `c`; keeps it when it still diverges in the target class.
  bool attempt(const Candidate& c, const std::string& what) {
    if (out_of_budget() || !has_forward(c.ops)) return false;
    ++tried_;
    CaseRun run;
    try {
      run = replay(c);
    } catch (const std::exception&) {
      return false;  // an op sequence the paths reject is not a smaller case of this divergence
    }
    if (run.comparison.agree || divergence_class(run.comparison) != target_) return false;
    best_ = c;
    best_run_ = std::move(run);
    ++steps_;
    say(fmt::format("reduce: step {}: {} -> {}: still diverges ({}) at {}", steps_, what,
                    scenario_size(with_ops(best_.ops), best_.layers), target_,
                    describe(*best_run_.comparison.first_divergence)));
    return true;
  }

  bool pass_layers() {
    for (int64_t k = 1; k < best_.layers; ++k) {
      Candidate c{{}, k};
      for (const auto& op : best_.ops)
        if (op.kind != OpKind::kInject || op.layer < k) c.ops.push_back(op);
      if (attempt(c, fmt::format("keep the first {} layer(s)", k))) return true;
    }
    return false;
  }

  bool pass_ops() {
    bool progress = false;
    for (size_t run = std::max<size_t>(best_.ops.size() / 2, 1); run >= 1; run /= 2) {
      // From the end backwards: later ops are the likelier to be irrelevant to an early divergence.
      for (size_t end = best_.ops.size(); !out_of_budget(); --end) {
        end = std::min(end, best_.ops.size());
        if (end < run) break;
        const size_t start = end - run;
        std::set<size_t> drop;
        for (size_t i = start; i < end; ++i) drop.insert(i);
        const auto what = run == 1 ? fmt::format("drop op {} ({})", start, op_kind_name(best_.ops[start].kind))
                                   : fmt::format("drop ops {}..{}", start, end - 1);
        if (attempt({without(best_.ops, drop), best_.layers}, what)) progress = true;
        if (end == run) break;
      }
      if (run == 1) break;
    }
    return progress;
  }

  // Forward op `i` with its tokens [B, T] replaced.
  Candidate with_tokens(size_t i, const torch::Tensor& tokens) const {
    Candidate c = best_;
    c.ops[i].tokens = tokens.contiguous();
    return c;
  }

  bool pass_tokens() {
    bool progress = false;
    for (size_t i = 0; i < best_.ops.size(); ++i) {
      if (best_.ops[i].kind != OpKind::kForward) continue;
      for (bool again = true; again && !out_of_budget();) {
        again = false;
        const int64_t T = best_.ops[i].tokens.size(1);
        std::set<int64_t> lengths;
        for (int64_t L : {int64_t{1}, int64_t{2}, int64_t{3}, T / 4, T / 2, 3 * T / 4, T - 1})
          if (L >= 1 && L < T) lengths.insert(L);
        for (int64_t L : lengths) {
          const torch::Tensor& t = best_.ops[i].tokens;
          if (attempt(with_tokens(i, t.narrow(1, 0, L)), fmt::format("op {}: first {} of {} tokens", i, L, T)) ||
              attempt(with_tokens(i, t.narrow(1, T - L, L)), fmt::format("op {}: last {} of {} tokens", i, L, T))) {
            progress = again = true;
            break;
          }
        }
      }
    }
    return progress;
  }

  // Every forward op and every [B,H,P,N] delta restricted to `rows`.
  Candidate with_rows(const std::vector<int64_t>& rows) const {
    Candidate c = best_;
    const torch::Tensor idx = torch::tensor(rows, torch::kInt64);
    for (auto& op : c.ops) {
      if (op.kind == OpKind::kForward) op.tokens = op.tokens.index_select(0, idx).contiguous();
      if (op.kind == OpKind::kInject && op.delta.dim() == 4) op.delta = op.delta.index_select(0, idx).contiguous();
    }
    return c;
  }

  bool pass_rows() {
    const int64_t B = with_ops(best_.ops).batch_size();
    if (B <= 1) return false;
    for (int64_t b = 0; b < B; ++b) {
      if (attempt(with_rows({b}), fmt::format("keep batch row {} of {}", b, B))) return true;
    }
    if (B > 2) {
      std::vector<int64_t> half(static_cast<size_t>(B / 2));
      for (int64_t b = 0; b < B / 2; ++b) half[static_cast<size_t>(b)] = b;
      if (attempt(with_rows(half), fmt::format("keep batch rows 0..{} of {}", B / 2 - 1, B))) return true;
    }
    return false;
  }

  bool pass_values() {
    bool progress = false;
    for (size_t i = 0; i < best_.ops.size() && !out_of_budget(); ++i) {
      const ScenarioOp& op = best_.ops[i];
      if (op.kind == OpKind::kForward) {
        if (!op.tokens.ne(0).any().item<bool>()) continue;
        if (attempt(with_tokens(i, torch::zeros_like(op.tokens)), fmt::format("op {}: token ids to 0", i))) {
          progress = true;
          continue;
        }
        while (best_.ops[i].tokens.ne(0).any().item<bool>() &&
               attempt(with_tokens(i, best_.ops[i].tokens.div(2, "floor")), fmt::format("op {}: token ids halved", i))) {
          progress = true;
        }
        const torch::Tensor& t = best_.ops[i].tokens;
        if (t.numel() > 16) continue;  // one by one only for short ops: each is a replay
        for (int64_t k = 0; k < t.numel(); ++k) {
          const torch::Tensor cur = best_.ops[i].tokens;
          if (cur.view({-1})[k].item<int64_t>() == 0) continue;
          torch::Tensor next = cur.clone();
          next.view({-1})[k] = 0;
          if (attempt(with_tokens(i, next), fmt::format("op {}: token {} to 0", i, k))) progress = true;
        }
      } else if (op.kind == OpKind::kInject) {
        if (!op.delta.ne(0).any().item<bool>()) continue;
        for (int rounds = 0; rounds < 4; ++rounds) {
          bool scaled = false;
          for (double f : {0.0, 0.1, 0.5}) {
            Candidate c = best_;
            c.ops[i].delta = f == 0.0 ? torch::zeros_like(best_.ops[i].delta) : best_.ops[i].delta * f;  // no -0.0
            if (attempt(c, fmt::format("op {}: delta scaled by {:g}", i, f))) {
              scaled = progress = true;
              break;
            }
          }
          if (!scaled || !best_.ops[i].delta.ne(0).any().item<bool>()) break;
        }
      }
    }
    return progress;
  }

  const DivergenceCase& input_;
  const ReduceOptions& opt_;
  const Mamba2Checkpoint full_;
  std::map<int64_t, Mamba2Checkpoint> truncated_;
  Clock::time_point t0_;
  Candidate best_;
  CaseRun best_run_;
  std::string target_;
  int64_t steps_ = 0, tried_ = 0;
};

}  // namespace

std::string scenario_size(const Scenario& s, int64_t layers) {
  int64_t forwards = 0, longest = 0;
  for (const auto& op : s.ops) {
    if (op.kind != OpKind::kForward) continue;
    ++forwards;
    longest = std::max<int64_t>(longest, op.tokens.size(1));
  }
  const int64_t rows = s.batch_size();
  return fmt::format("{} op{} ({} forward, {} token{}, longest {}), {} row{}, {} layer{}", s.ops.size(),
                     s.ops.size() == 1 ? "" : "s", forwards, total_tokens(s.ops), total_tokens(s.ops) == 1 ? "" : "s",
                     longest, rows, rows == 1 ? "" : "s", layers, layers == 1 ? "" : "s");
}

namespace {

// The `file:` side of a case played anew by an exporter command on each candidate: a path from
// outside the registry (a PathProvider, like the mutants), named "exporter:<the file's name>".
class ExporterPath {
 public:
  ExporterPath(std::string command, std::filesystem::path work) : command_(std::move(command)), work_(std::move(work)) {
    std::filesystem::create_directories(work_);
  }

  ScenarioResult evaluate(const Scenario& scenario, const Mamba2Checkpoint& ck) {
    const std::filesystem::path dir = work_ / std::to_string(++runs_);
    std::filesystem::create_directories(dir);
    ck.save(dir / "model");
    Scenario s = scenario;
    s.model_dir = dir / "model";
    s.save(dir / "scenario.json");
    last_export_ = dir / "export.safetensors";
    std::string cmd = command_;
    replace_all(cmd, "{scenario}", quoted(dir / "scenario.json"));
    replace_all(cmd, "{out}", quoted(last_export_));
    // In a subshell, so that the whole command line's output goes to the log, not its last part's.
    const int status = std::system(("(" + cmd + ") > " + quoted(dir / "log.txt") + " 2>&1").c_str());
    if (status != 0 || !std::filesystem::exists(last_export_)) {
      // One line, with the end of the exporter's own output: the work folder (and the log in it) is
      // removed when reduce ends.
      const std::string exit = WIFEXITED(status) ? fmt::format("exit {}", WEXITSTATUS(status))
                                                 : fmt::format("wait status {}", status);
      throw InputError(fmt::format("exporter: '{}' failed on a candidate ({}{}): {}", command_, exit,
                                   status == 0 ? ", no export written" : "", last_line_of(dir / "log.txt")));
    }
    return read_result_file(last_export_, scenario, ck.config.vocab_size);
  }
  // The export of the scenario evaluated last.
  const std::filesystem::path& last_export() const { return last_export_; }

 private:
  static std::string quoted(const std::filesystem::path& p) {
    std::string out = "'";
    for (char ch : p.string()) out += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
    return out + "'";
  }
  static std::string last_line_of(const std::filesystem::path& log) {
    std::ifstream in(log);
    std::string line, last = "(no output)";
    while (std::getline(in, line))
      if (line.find_first_not_of(" \t\r") != std::string::npos) last = line;
    return last.size() > 200 ? last.substr(0, 200) + "..." : last;
  }
  static void replace_all(std::string& s, const std::string& what, const std::string& with) {
    for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + with.size())) {
      s.replace(at, what.size(), with);
    }
  }

  std::string command_;
  std::filesystem::path work_;
  int runs_ = 0;
  std::filesystem::path last_export_;
};

constexpr const char* kExporterPrefix = "exporter:";

}  // namespace

ReduceOutcome reduce_case(const DivergenceCase& input, const ReduceOptions& opt) {
  const bool a_file = is_file_path(input.path_a), b_file = is_file_path(input.path_b);
  if (!a_file && !b_file) return Reducer(input, opt).run();
  const std::string file_side = a_file ? input.path_a : input.path_b;
  if (opt.exporter.empty()) {
    throw InputError(fmt::format("{}: key 'paths': '{}' holds fixed results that cannot be re-run on a smaller "
                                 "scenario; give reduce --exporter CMD to export each candidate anew",
                                 (input.dir / "case.json").string(), file_side));
  }
  if (a_file && b_file) {
    throw InputError(fmt::format("{}: key 'paths': both sides are files; reduce re-runs one exporter, for one side",
                                 (input.dir / "case.json").string()));
  }
  const std::filesystem::path work =
      opt.work_dir.empty() ? std::filesystem::temp_directory_path() / fmt::format("mambadiff-reduce-{}", ::getpid())
                           : opt.work_dir;
  auto exporter = std::make_shared<ExporterPath>(opt.exporter, work);
  const std::string name = kExporterPrefix + file_path_target(file_side).filename().string();
  install_path_provider({kExporterPrefix, [name] { return std::vector<std::string>{name}; },
                         [exporter](const std::string&, const Scenario& s, const Mamba2Checkpoint& ck) {
                           return exporter->evaluate(s, ck);
                         }});
  DivergenceCase played = input;
  (a_file ? played.path_a : played.path_b) = name;
  ReduceOutcome out = Reducer(played, opt).run();
  // The reduced case as a case of files again: the export of its own scenario (the best candidate's;
  // exported once more so that the file is that scenario's whatever was tried last).
  exporter->evaluate(out.reduced.scenario, out.reduced.checkpoint());
  const std::string exported = file_path_name(exporter->last_export());
  (a_file ? out.reduced.path_a : out.reduced.path_b) = exported;
  (a_file ? out.run.path_a : out.run.path_b) = exported;
  return out;
}

}  // namespace mambadiff
