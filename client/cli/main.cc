// kvpool: the command-line client. Subcommands: generate (stream one request's tokens
// and its timings), stats (a worker's or a manager's counters), loadgen (a closed-loop
// load test), up (a local manager plus workers), calc (KV-cache memory arithmetic,
// offline) and bench (the experiment and its scenarios, with a report). Each lives in
// its own file; this file only dispatches.
#include <CLI/CLI.hpp>

#include "client/cli/cli_util.h"

int main(int argc, char** argv) {
  CLI::App app{"kvpool: client for kvpool workers and cache managers"};
  app.require_subcommand(1);
  int exit_code = 0;
  kvpool::cli::AddGenerateCommand(app, &exit_code);
  kvpool::cli::AddStatsCommand(app, &exit_code);
  kvpool::cli::AddLoadgenCommand(app, &exit_code);
  kvpool::cli::AddUpCommand(app, &exit_code);
  kvpool::cli::AddCalcCommand(app, &exit_code);
  kvpool::cli::AddBenchCommand(app, &exit_code);
  kvpool::cli::AddPinCommands(app, &exit_code);
  CLI11_PARSE(app, argc, argv);
  return exit_code;
}
