// Shared by the client tests that run real processes: a loopback address nobody listens
// on (for UNAVAILABLE paths), a temporary file, and RunCli, which runs the kvpool CLI.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

namespace kvpool::testing {

// "127.0.0.1:PORT" of a port that was free a moment ago and is closed now.
inline std::string ClosedAddress() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(addr);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length);
  close(fd);
  return "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
}

// Writes `contents` to a fresh file under /tmp and returns its path.
inline std::string WriteTempFile(const std::string& name, const std::string& contents) {
  const std::string path = "/tmp/kvpool-client-test-" + std::to_string(getpid()) + "-" + name;
  std::ofstream(path) << contents;
  return path;
}

struct CliRun {
  int exit_code = -1;
  std::string output;
};

// Runs `kvpool ARGS` through the shell; output is stdout, plus stderr when asked.
inline CliRun RunCli(const std::string& args, bool with_stderr = true) {
  const std::string command =
      std::string(KVPOOL_CLI_BIN) + " " + args + (with_stderr ? " 2>&1" : " 2>/dev/null");
  CliRun run;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return run;
  char chunk[4096];
  size_t n;
  while ((n = fread(chunk, 1, sizeof(chunk), pipe)) > 0) run.output.append(chunk, n);
  const int status = pclose(pipe);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

}  // namespace kvpool::testing
