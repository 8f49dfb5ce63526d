// Helpers every kvpool subcommand shares: the --server/--token-file/--deadline-ms/--tls-*
// flags and the ClientOptions they make, error reporting (the gRPC code name and the server's
// message on stderr, a non-zero exit code), percentiles for latency reports, and the
// subcommand registration functions main.cc calls.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "kvpool/client.h"

namespace kvpool::cli {

// PEM files for TLS to the servers (all empty: plaintext).
struct TlsFlags {
  std::string ca;    // --tls-ca: the CA the servers' certificates chain to
  std::string cert;  // --tls-cert: a client certificate, for mTLS servers
  std::string key;   // --tls-key: its private key
};

// The flags that say which servers to call and how.
struct ConnectionFlags {
  std::vector<std::string> servers;  // --server A,B
  std::string token_file;            // first line: the bearer token
  int64_t deadline_ms = 0;           // per call; 0 = none
  TlsFlags tls;
};

// Adds --server (required), --token-file, --deadline-ms and the TLS flags to `command`.
// `server_required`: false where another flag can name the target instead (loadgen's
// --openai-url); the command then checks that one of them is there.
void AddConnectionFlags(CLI::App* command, ConnectionFlags* flags, bool server_required = true);
// Adds --tls-ca, --tls-cert and --tls-key to `command`.
void AddTlsFlags(CLI::App* command, TlsFlags* flags);
// Puts the TLS files into `options` after checking that they can be read (errors name
// the flag and the path).
Status ApplyTlsFlags(const TlsFlags& flags, ClientOptions* options);
// ClientOptions from the flags; INVALID_ARGUMENT / NOT_FOUND when the token file or a
// TLS file is bad.
StatusOr<ClientOptions> MakeClientOptions(const ConnectionFlags& flags);
// The first line of `path`, trimmed; "" when `path` is "".
StatusOr<std::string> ReadTokenFile(const std::string& path);

// Prints "kvpool COMMAND: CODE_NAME: message" to stderr; returns the exit code (1).
int ReportError(std::string_view command, const Status& status);

// The folder of the running kvpool binary (the services' binaries sit beside it).
std::string BinaryDirectory();

// What a shell command wrote to stdout, its trailing newlines removed ("" when it
// could not run).
std::string CommandOutput(const std::string& command);

// The p-quantile (p in [0, 1]) of `values` with linear interpolation; 0 when empty.
double Percentile(std::vector<double> values, double p);

// Each adds its subcommand to `app`; when it runs, its exit code is stored in *exit_code.
void AddGenerateCommand(CLI::App& app, int* exit_code);
void AddStatsCommand(CLI::App& app, int* exit_code);
void AddLoadgenCommand(CLI::App& app, int* exit_code);
void AddUpCommand(CLI::App& app, int* exit_code);
void AddCalcCommand(CLI::App& app, int* exit_code);
void AddBenchCommand(CLI::App& app, int* exit_code);
void AddPinCommands(CLI::App& app, int* exit_code);

}  // namespace kvpool::cli
