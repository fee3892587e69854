// Every `mambadiff` subcommand registers itself on the CLI11 app through one function here;
// cli/main.cpp calls them all. A command's callback stores its exit code (SPEC §6: 0 pass,
// 1 divergence found / goal not met, 2 bad input) in `exit_code`; bad input is thrown as
// mambadiff::InputError and turned into exit code 2 with a one-line message by main.
#pragma once

#include <CLI/CLI.hpp>

namespace mambadiff::cli {

void add_run_command(CLI::App& app, int& exit_code);
void add_diff_command(CLI::App& app, int& exit_code);
void add_check_command(CLI::App& app, int& exit_code);
void add_repro_command(CLI::App& app, int& exit_code);
void add_reduce_command(CLI::App& app, int& exit_code);
void add_mutants_command(CLI::App& app, int& exit_code);
void add_optimize_command(CLI::App& app, int& exit_code);
void add_generate_command(CLI::App& app, int& exit_code);
void add_fuzz_command(CLI::App& app, int& exit_code);
void add_trend_command(CLI::App& app, int& exit_code);
void add_bench_command(CLI::App& app, int& exit_code);

}  // namespace mambadiff::cli
