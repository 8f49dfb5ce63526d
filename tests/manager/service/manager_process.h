// Test harness for the real kvpool-manager binary: ManagerProcess starts it on
// 127.0.0.1 with port 0, parses the printed gRPC and HTTP addresses, hands out stubs,
// and tears it down (SIGTERM, then SIGKILL if it lingers), so every test is bounded in
// time and leaves no process behind. Subprocess is the fork/exec + stdout pipe beneath
// it, also used for the lease test's helper client. HttpGet is a tiny loopback client.
#pragma once

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kvpool/v1/manager.grpc.pb.h"

namespace kvpool::manager::testing {

class Subprocess {
 public:
  // Starts `argv[0]` with `argv`; its stdout (and its stderr, with `merge_stderr`) is
  // readable through ReadLine.
  explicit Subprocess(const std::vector<std::string>& argv, bool merge_stderr = false);
  ~Subprocess();  // SIGKILLs and reaps it if still running
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  pid_t pid() const { return pid_; }
  // The next stdout line, or nullopt at EOF or after `timeout`.
  std::optional<std::string> ReadLine(std::chrono::milliseconds timeout);
  // Sends `signal` and waits up to `timeout` for the exit; the wait status, or nullopt.
  std::optional<int> SignalAndWait(int signal, std::chrono::milliseconds timeout);

 private:
  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  std::string buffer_;
};

class ManagerProcess {
 public:
  // Starts kvpool-manager with --listen/--http on 127.0.0.1:0 plus `args`; fails the
  // test (ADD_FAILURE) and leaves address() empty when it does not come up in 10 s.
  // channel() uses `credentials` (null: plaintext), e.g. for a manager with --tls-cert.
  explicit ManagerProcess(std::vector<std::string> args,
                          std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr);
  ~ManagerProcess();  // SIGTERM (clean shutdown: the shm pool is unlinked), then SIGKILL

  const std::string& address() const { return grpc_address_; }
  const std::string& http_address() const { return http_address_; }
  Subprocess& process() { return *process_; }
  std::unique_ptr<v1::CacheManager::Stub> NewStub() const;
  std::shared_ptr<grpc::Channel> channel() const { return channel_; }

 private:
  std::unique_ptr<Subprocess> process_;
  std::string grpc_address_, http_address_;
  std::shared_ptr<grpc::Channel> channel_;
};

// A context whose call fails with DEADLINE_EXCEEDED after 5 s instead of hanging.
std::unique_ptr<grpc::ClientContext> Ctx(const std::string& bearer_token = "");

// GET http://host:port/path over loopback; the whole response (status line, headers,
// body), or "" when the connection fails.
std::string HttpGet(const std::string& host_port, const std::string& path);

}  // namespace kvpool::manager::testing
