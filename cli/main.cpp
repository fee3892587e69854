// mambadiff: differential verification and fuzzing harness for Mamba2 models.
// Exit codes (SPEC §6): 0 pass, 1 divergence found / goal not met, 2 bad input or usage;
// 3 an internal error (a kernel or LibTorch failure that is no fault of the input).
#include <fmt/format.h>

#include "cli/commands.h"
#include "engine/errors.h"
#include "harness/path_registry.h"

int main(int argc, char** argv) {
  CLI::App app{"mambadiff: differential verification and fuzzing harness for Mamba2 models"};
  app.require_subcommand(1);
  // A usage error is one line naming the option ("--lr: inf is not a finite number > 0"), like
  // every other error; CLI11's default adds a second "Run with --help" line.
  app.failure_message([](const CLI::App*, const CLI::Error& e) { return fmt::format("mambadiff: usage: {}\n", e.what()); });
  int exit_code = 0;
  mambadiff::cli::add_run_command(app, exit_code);
  mambadiff::cli::add_diff_command(app, exit_code);
  mambadiff::cli::add_check_command(app, exit_code);
  mambadiff::cli::add_repro_command(app, exit_code);
  mambadiff::cli::add_reduce_command(app, exit_code);
  mambadiff::cli::add_mutants_command(app, exit_code);
  mambadiff::cli::add_optimize_command(app, exit_code);
  mambadiff::cli::add_generate_command(app, exit_code);
  mambadiff::cli::add_fuzz_command(app, exit_code);
  mambadiff::cli::add_trend_command(app, exit_code);
  mambadiff::cli::add_bench_command(app, exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  } catch (const mambadiff::InputError& e) {
    fmt::print(stderr, "mambadiff: error: {}\n", e.what());
    return 2;
  } catch (const mambadiff::PathUnavailable& e) {
    fmt::print(stderr, "mambadiff: path unavailable here: {}\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "mambadiff: internal error: {}\n", mambadiff::first_line(e));
    return 3;
  }
  return exit_code;
}
