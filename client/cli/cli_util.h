// Helpers every kvpool subcommand shares: the --server/--token-file/--deadline-ms flags
// and the ClientOptions they make, error reporting (the gRPC code name and the server's
// message on stderr, a non-zero exit code), percentiles for latency reports, and the
// subcommand registration functions main.cc calls.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "kvpool/client.h"

namespace kvpool::cli {

// The flags that say which servers to call and how.
struct ConnectionFlags {
  std::vector<std::string> servers;  // --server A,B
  std::string token_file;            // first line: the bearer token
  int64_t deadline_ms = 0;           // per call; 0 = none
};

// Adds --server (required), --token-file and --deadline-ms to `command`.
void AddConnectionFlags(CLI::App* command, ConnectionFlags* flags);
// ClientOptions from the flags; INVALID_ARGUMENT / NOT_FOUND when the token file is bad.
StatusOr<ClientOptions> MakeClientOptions(const ConnectionFlags& flags);
// The first line of `path`, trimmed; "" when `path` is "".
StatusOr<std::string> ReadTokenFile(const std::string& path);

// Prints "kvpool COMMAND: CODE_NAME: message" to stderr; returns the exit code (1).
int ReportError(std::string_view command, const Status& status);

// The folder of the running kvpool binary (the services' binaries sit beside it).
std::string BinaryDirectory();

// The p-quantile (p in [0, 1]) of `values` with linear interpolation; 0 when empty.
double Percentile(std::vector<double> values, double p);

// Each adds its subcommand to `app`; when it runs, its exit code is stored in *exit_code.
void AddGenerateCommand(CLI::App& app, int* exit_code);
void AddStatsCommand(CLI::App& app, int* exit_code);
void AddLoadgenCommand(CLI::App& app, int* exit_code);
void AddUpCommand(CLI::App& app, int* exit_code);
void AddCalcCommand(CLI::App& app, int* exit_code);
void AddBenchCommand(CLI::App& app, int* exit_code);

}  // namespace kvpool::cli
