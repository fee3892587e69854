// `mambadiff trend HISTORY [--report F.html]`: error ÷ tolerance per case across the commits recorded
// by `check --history` (harness/trend.h); exit 1 when a case drifted toward its tolerance.
#include <fmt/format.h>

#include "cli/commands.h"
#include "engine/output_file.h"
#include "harness/history.h"
#include "harness/trend.h"

namespace mambadiff::cli {

void add_trend_command(CLI::App& app, int& exit_code) {
  struct Args {
    std::string history, report;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand(
      "trend", "Each case's error ÷ tolerance across the commits of a `check --history` file; exit 1 on drift");
  cmd->add_option("history", args->history, "The JSON-lines file `check --history` appends to (only read)")->required();
  cmd->add_option("--report", args->report, "Write the trend as one HTML page (a sparkline per case)");
  cmd->callback([args, &exit_code] {
    const TrendReport rep = analyse_trend(read_history(args->history), args->history);
    fmt::print("{}", trend_table(rep));
    if (!args->report.empty()) {
      write_text_atomically(args->report, trend_html(rep));
      fmt::print("trend report written to {}\n", args->report);
    }
    exit_code = rep.flagged() ? 1 : 0;
  });
}

}  // namespace mambadiff::cli
