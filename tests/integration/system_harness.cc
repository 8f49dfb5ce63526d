#include "system_harness.h"

#include <gtest/gtest.h>

#include <csignal>
#include <random>
#include <thread>

namespace kvpool::integration {

WorkerProcess::WorkerProcess(const std::string& manager, std::vector<std::string> args,
                             std::shared_ptr<grpc::ChannelCredentials> credentials) {
  std::vector<std::string> argv = {KVPOOL_WORKER_BIN, "--manager", manager,      "--listen",
                                   "127.0.0.1:0",     "--http",    "127.0.0.1:0"};
  argv.insert(argv.end(), args.begin(), args.end());
  process_ = std::make_unique<Subprocess>(argv);
  static const std::string kListening = "kvpool-worker listening on ";
  std::optional<std::string> line = process_->ReadLine(std::chrono::seconds(60));
  if (!line || line->rfind(kListening, 0) != 0) {
    ADD_FAILURE() << "kvpool-worker did not start: " << line.value_or("<no output>");
    return;
  }
  static const std::string kHttp = "kvpool-worker http on ";
  std::optional<std::string> http = process_->ReadLine(std::chrono::seconds(10));
  if (!http || http->rfind(kHttp, 0) != 0) {
    ADD_FAILURE() << "kvpool-worker did not serve HTTP: " << http.value_or("<no output>");
    return;
  }
  http_address_ = http->substr(kHttp.size());
  if (!WaitForLine("kvpool-worker attached to ", std::chrono::seconds(60))) {
    ADD_FAILURE() << "kvpool-worker did not attach to the manager at " << manager;
    return;
  }
  address_ = line->substr(kListening.size());
  channel_ =
      grpc::CreateChannel(address_, credentials ? credentials : grpc::InsecureChannelCredentials());
}

WorkerProcess::~WorkerProcess() {
  if (process_ && !process_->SignalAndWait(SIGTERM, std::chrono::seconds(10))) {
    process_->SignalAndWait(SIGKILL, std::chrono::seconds(5));
  }
}

bool WorkerProcess::WaitForLine(const std::string& prefix, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    std::optional<std::string> line = process_->ReadLine(left);
    if (!line) return false;
    if (line->rfind(prefix, 0) == 0) return true;
  }
  return false;
}

std::unique_ptr<v1::Worker::Stub> WorkerProcess::NewStub() const {
  return v1::Worker::NewStub(channel_);
}

GenerateOutcome Generate(v1::Worker::Stub& stub, const v1::GenerateRequest& request,
                         const std::string& bearer,
                         const std::function<bool(const v1::GeneratedToken&)>& on_token,
                         std::chrono::milliseconds deadline) {
  GenerateOutcome outcome;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + deadline);
  if (!bearer.empty()) context.AddMetadata("authorization", "Bearer " + bearer);
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      stub.Generate(&context, request);
  v1::GenerateResponse response;
  bool cancelled = false;
  while (reader->Read(&response)) {
    if (response.has_token()) {
      const v1::GeneratedToken& t = response.token();
      if (static_cast<int>(outcome.tokens.size()) <= t.index()) {
        outcome.tokens.resize(t.index() + 1);
        outcome.text.resize(t.index() + 1);
      }
      outcome.tokens[t.index()].push_back(t.token_id());
      outcome.text[t.index()] += t.text();
      if (on_token && !cancelled && !on_token(t)) {
        context.TryCancel();
        cancelled = true;
      }
    } else if (response.has_summary()) {
      outcome.summary = response.summary();
      outcome.has_summary = true;
    }
  }
  outcome.status = reader->Finish();
  return outcome;
}

v1::GenerateRequest GreedyRequest(const std::vector<int32_t>& token_ids, int32_t max_tokens,
                                  v1::KvMode mode) {
  v1::GenerateRequest request;
  request.mutable_token_ids()->Add(token_ids.begin(), token_ids.end());
  request.set_max_tokens(max_tokens);
  request.set_mode(mode);
  request.set_ignore_eos(true);
  return request;
}

std::vector<int32_t> RandomTokens(int n, uint32_t seed, int vocab) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> pick(0, vocab - 1);
  std::vector<int32_t> tokens(n);
  for (int32_t& t : tokens) t = pick(rng);
  return tokens;
}

v1::GetWorkerStatsResponse WorkerStats(WorkerProcess& worker, const std::string& bearer,
                                       grpc::Status* status) {
  auto stub = worker.NewStub();
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  if (!bearer.empty()) context.AddMetadata("authorization", "Bearer " + bearer);
  v1::GetWorkerStatsResponse stats;
  const grpc::Status got = stub->GetStats(&context, v1::GetWorkerStatsRequest(), &stats);
  if (status != nullptr) {
    *status = got;
  } else {
    EXPECT_TRUE(got.ok()) << got.error_message();
  }
  return stats;
}

v1::GetStatsResponse ManagerStats(v1::CacheManager::Stub& stub) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::GetStatsResponse response;
  const grpc::Status status = stub.GetStats(&context, v1::GetStatsRequest(), &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response;
}

bool ManagerInvariantsHold(v1::CacheManager::Stub& stub, std::string* violation) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::CheckInvariantsResponse response;
  const grpc::Status status =
      stub.CheckInvariants(&context, v1::CheckInvariantsRequest(), &response);
  *violation = status.ok() ? response.violation() : status.error_message();
  return status.ok() && response.ok();
}

bool WaitUntil(const std::function<bool()>& condition, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return condition();
}

}  // namespace kvpool::integration
