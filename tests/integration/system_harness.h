// Harness for integration tests: WorkerProcess starts the real kvpool-worker against
// a manager on loopback (port 0), waits until it has attached, and tears it down;
// Generate drives the Worker API through the generated stub and collects the stream.
// Processes come from tests/manager/service/manager_process.h (Subprocess,
// ManagerProcess), so every test is bounded in time and leaves nothing behind.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kvpool/v1/manager.grpc.pb.h"
#include "kvpool/v1/worker.grpc.pb.h"
#include "service/manager_process.h"

namespace kvpool::integration {

using manager::testing::ManagerProcess;
using manager::testing::MergedStderr;
using manager::testing::Subprocess;

class WorkerProcess {
 public:
  // Starts kvpool-worker --manager `manager` --listen 127.0.0.1:0 --http 127.0.0.1:0
  // plus `args`; waits
  // (up to 60 s) for it to serve and to attach; ADD_FAILURE and empty address() if not.
  // NewStub's channel uses `credentials` (null: plaintext), e.g. with --tls-cert.
  WorkerProcess(const std::string& manager, std::vector<std::string> args,
                std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr);
  ~WorkerProcess();  // SIGTERM, then SIGKILL

  const std::string& address() const { return address_; }
  const std::string& http_address() const { return http_address_; }  // /metrics, /healthz
  Subprocess& process() { return *process_; }
  std::unique_ptr<v1::Worker::Stub> NewStub() const;
  // The next stdout line that starts with `prefix`, within `timeout`.
  bool WaitForLine(const std::string& prefix, std::chrono::milliseconds timeout);

 private:
  std::unique_ptr<Subprocess> process_;
  std::string address_, http_address_;
  std::shared_ptr<grpc::Channel> channel_;
};

struct GenerateOutcome {
  grpc::Status status;
  std::vector<std::vector<int32_t>> tokens;  // per sample
  std::vector<std::string> text;             // per sample
  v1::GenerateSummary summary;
  bool has_summary = false;
};

// Runs one Generate call. `bearer` is sent as "authorization: Bearer ..." when set;
// `on_token` sees each token and may return false to cancel the call.
GenerateOutcome Generate(v1::Worker::Stub& stub, const v1::GenerateRequest& request,
                         const std::string& bearer = "",
                         const std::function<bool(const v1::GeneratedToken&)>& on_token = {},
                         std::chrono::milliseconds deadline = std::chrono::seconds(120));

// A request of `token_ids` (greedy, ignore_eos so exactly max_tokens come back).
v1::GenerateRequest GreedyRequest(const std::vector<int32_t>& token_ids, int32_t max_tokens,
                                  v1::KvMode mode);
// `n` token ids drawn from [0, vocab) with a fixed seed.
std::vector<int32_t> RandomTokens(int n, uint32_t seed, int vocab = 50257);

v1::GetStatsResponse ManagerStats(v1::CacheManager::Stub& stub);
// The worker's GetStats, as `bearer` ("authorization: Bearer ..." when set); the call's
// status goes to `status` when given, else it must be OK.
v1::GetWorkerStatsResponse WorkerStats(WorkerProcess& worker, const std::string& bearer = "",
                                       grpc::Status* status = nullptr);
bool ManagerInvariantsHold(v1::CacheManager::Stub& stub, std::string* violation);
// Polls `condition` every 20 ms until it holds or `timeout` passes.
bool WaitUntil(const std::function<bool()>& condition, std::chrono::milliseconds timeout);

}  // namespace kvpool::integration
