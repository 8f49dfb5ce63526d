// Test harness for the real kvpool-manager binary: ManagerProcess starts it on
// 127.0.0.1 with port 0, parses the printed gRPC and HTTP addresses, hands out stubs,
// and tears it down (SIGTERM, then SIGKILL if it lingers), so every test is bounded in
// time and leaves no process behind. Subprocess (common/subprocess.h) is the fork/exec
// and stdout pipe beneath it. HttpGet is a tiny loopback client.
#pragma once

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/subprocess.h"
#include "kvpool/v1/manager.grpc.pb.h"

namespace kvpool::manager::testing {

// The one fork/exec helper (common/subprocess.h), by its old name in the tests.
using ::kvpool::Subprocess;
using ::kvpool::SubprocessOptions;

// Options for a child whose stderr is read through ReadLine with its stdout.
inline SubprocessOptions MergedStderr() {
  SubprocessOptions options;
  options.merge_stderr = true;
  return options;
}

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
