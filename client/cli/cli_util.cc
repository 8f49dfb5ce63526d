// ConnectionFlags, token files, error reporting and percentiles: see cli_util.h.
#include "client/cli/cli_util.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "common/tls.h"

namespace kvpool::cli {

void AddConnectionFlags(CLI::App* command, ConnectionFlags* flags, bool server_required) {
  command->add_option("--server", flags->servers, "HOST:PORT[,HOST:PORT...]")
      ->required(server_required)
      ->delimiter(',');
  command->add_option("--token-file", flags->token_file,
                      "file whose first line is the bearer token");
  command->add_option("--deadline-ms", flags->deadline_ms, "deadline of each call (0: none)")
      ->check(CLI::NonNegativeNumber);
  AddTlsFlags(command, &flags->tls);
}

void AddTlsFlags(CLI::App* command, TlsFlags* flags) {
  command->add_option("--tls-ca", flags->ca,
                      "PEM CA bundle the servers' certificates chain to: connect over TLS");
  command->add_option("--tls-cert", flags->cert,
                      "PEM client certificate, for servers that require one (mTLS)");
  command->add_option("--tls-key", flags->key, "PEM private key of --tls-cert");
}

Status ApplyTlsFlags(const TlsFlags& flags, ClientOptions* options) {
  TlsFiles files;  // default flag names: --tls-ca, --tls-cert, --tls-key
  files.ca = flags.ca;
  files.cert = flags.cert;
  files.key = flags.key;
  KVPOOL_RETURN_IF_ERROR(TlsChannelCredentials(files).status());
  options->tls_ca_file = flags.ca;
  options->tls_cert_file = flags.cert;
  options->tls_key_file = flags.key;
  return Status::Ok();
}

StatusOr<ClientOptions> MakeClientOptions(const ConnectionFlags& flags) {
  ClientOptions options;
  options.addresses = flags.servers;
  KVPOOL_ASSIGN_OR_RETURN(options.token, ReadTokenFile(flags.token_file));
  options.deadline = std::chrono::milliseconds(flags.deadline_ms);
  KVPOOL_RETURN_IF_ERROR(ApplyTlsFlags(flags.tls, &options));
  return options;
}

StatusOr<std::string> ReadTokenFile(const std::string& path) {
  if (path.empty()) return std::string();
  std::ifstream file(path);
  if (!file) return NotFound("cannot open token file " + path);
  std::string line;
  std::getline(file, line);
  const size_t begin = line.find_first_not_of(" \t\r");
  const size_t end = line.find_last_not_of(" \t\r");
  if (begin == std::string::npos) return InvalidArgument("token file " + path + " is empty");
  return line.substr(begin, end - begin + 1);
}

int ReportError(std::string_view command, const Status& status) {
  std::cerr << "kvpool " << command << ": " << status.ToString() << "\n";
  return 1;
}

std::string BinaryDirectory() {
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(".") : exe.parent_path().string();
}

std::string CommandOutput(const std::string& command) {
  std::string out;
  if (FILE* pipe = popen(command.c_str(), "r")) {
    char buffer[4096];
    size_t n;
    while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) out.append(buffer, n);
    pclose(pipe);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const double rank = std::clamp(p, 0.0, 1.0) * static_cast<double>(values.size() - 1);
  const size_t below = static_cast<size_t>(std::floor(rank));
  const size_t above = std::min(below + 1, values.size() - 1);
  const double fraction = rank - static_cast<double>(below);
  return values[below] + (values[above] - values[below]) * fraction;
}

}  // namespace kvpool::cli
