// Failures of whole processes: a worker SIGKILLed mid-generation (its client gets
// UNAVAILABLE or CANCELLED, the other worker keeps serving, the manager takes the dead
// worker's blocks back within 2 x TTL) and a manager restarted under running workers
// (they fail what was in flight with UNAVAILABLE and attach to the new one by
// themselves).
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <set>
#include <thread>

#include "grpc/health/v1/health.grpc.pb.h"
#include "system_harness.h"

namespace kvpool::integration {
namespace {

// A loopback port that was free a moment ago.
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

TEST(FailureTest, KilledWorkerFailsItsClientAndItsBlocksComeBack) {
  constexpr int kTtlMs = 1000;
  ManagerProcess manager(
      {"--model", "tiny-gpt2", "--num-blocks", "256", "--lease-ttl-ms", std::to_string(kTtlMs)});
  ASSERT_FALSE(manager.address().empty());
  WorkerProcess doomed(manager.address(), {"--model", "tiny-gpt2", "--threads", "1"});
  WorkerProcess survivor(manager.address(), {"--model", "tiny-gpt2", "--threads", "1"});
  ASSERT_FALSE(doomed.address().empty());
  ASSERT_FALSE(survivor.address().empty());
  auto manager_stub = manager.NewStub();
  auto stub = doomed.NewStub();
  int seen = 0;
  std::chrono::steady_clock::time_point killed_at;
  GenerateOutcome out =
      Generate(*stub, GreedyRequest(RandomTokens(100, 21), 400, v1::KV_MODE_PAGED), "",
               [&](const v1::GeneratedToken&) {
                 if (++seen == 3) {
                   EXPECT_GT(ManagerStats(*manager_stub).in_use_blocks(), 0);
                   kill(doomed.process().pid(), SIGKILL);
                   killed_at = std::chrono::steady_clock::now();
                 }
                 return true;
               });
  EXPECT_TRUE(out.status.error_code() == grpc::StatusCode::UNAVAILABLE ||
              out.status.error_code() == grpc::StatusCode::CANCELLED)
      << out.status.error_code() << " " << out.status.error_message();
  auto survivor_stub = survivor.NewStub();
  GenerateOutcome served =
      Generate(*survivor_stub, GreedyRequest(RandomTokens(30, 22), 10, v1::KV_MODE_PAGED));
  EXPECT_TRUE(served.status.ok()) << served.status.error_message();
  EXPECT_TRUE(WaitUntil(
      [&] { return ManagerStats(*manager_stub).in_use_blocks() == 0; },
      std::chrono::milliseconds(2 * kTtlMs) - std::chrono::duration_cast<std::chrono::milliseconds>(
                                                  std::chrono::steady_clock::now() - killed_at)));
  const v1::GetStatsResponse stats = ManagerStats(*manager_stub);
  EXPECT_EQ(stats.expired_leases(), 1);
  EXPECT_EQ(stats.num_workers(), 1);
  std::string violation;
  EXPECT_TRUE(ManagerInvariantsHold(*manager_stub, &violation)) << violation;
}

TEST(FailureTest, WorkersRecoverWhenTheManagerRestarts) {
  const std::string address = "127.0.0.1:" + std::to_string(FreePort());
  const std::vector<std::string> manager_argv = {
      KVPOOL_MANAGER_BIN, "--listen", address, "--model", "tiny-gpt2", "--num-blocks", "128"};
  auto manager = std::make_unique<Subprocess>(manager_argv);
  ASSERT_TRUE(manager->ReadLine(std::chrono::seconds(10)).has_value());
  WorkerProcess worker(address, {"--model", "tiny-gpt2", "--threads", "1"});
  ASSERT_FALSE(worker.address().empty());
  auto stub = worker.NewStub();
  const v1::GenerateRequest request = GreedyRequest(RandomTokens(40, 31), 20, v1::KV_MODE_PAGED);
  GenerateOutcome before = Generate(*stub, request);
  ASSERT_TRUE(before.status.ok()) << before.status.error_message();

  // Stop the manager in the middle of a long request.
  int seen = 0;
  GenerateOutcome cut = Generate(*stub, GreedyRequest(RandomTokens(40, 32), 450, v1::KV_MODE_PAGED),
                                 "", [&](const v1::GeneratedToken&) {
                                   if (++seen == 3)
                                     manager->SignalAndWait(SIGTERM, std::chrono::seconds(10));
                                   return true;
                                 });
  EXPECT_EQ(cut.status.error_code(), grpc::StatusCode::UNAVAILABLE) << cut.status.error_message();

  manager = std::make_unique<Subprocess>(manager_argv);
  ASSERT_TRUE(manager->ReadLine(std::chrono::seconds(10)).has_value());
  ASSERT_TRUE(worker.WaitForLine("kvpool-worker attached to ", std::chrono::seconds(20)));
  GenerateOutcome after;
  ASSERT_TRUE(WaitUntil(
      [&] {
        after = Generate(*stub, request);
        return after.status.ok();
      },
      std::chrono::seconds(10)))
      << after.status.error_message();
  EXPECT_EQ(after.tokens, before.tokens);
  grpc::ClientContext context;
  v1::GetWorkerStatsResponse stats;
  ASSERT_TRUE(stub->GetStats(&context, v1::GetWorkerStatsRequest(), &stats).ok());
  EXPECT_TRUE(stats.attached());
  EXPECT_EQ(stats.reattachments_total(), 1);
  manager->SignalAndWait(SIGTERM, std::chrono::seconds(10));
}

// The race that once gave wrong tokens: a manager SIGKILLed and restarted on the same
// port, and a new worker registered with the new instance before an idle worker's next
// heartbeat. A restarted manager used to number workers from 1 again, so the idle
// worker's heartbeat under its old id succeeded (the new worker had that id), it never
// re-attached and kept writing K/V into the dead pool while the new manager published
// the blocks as cached. Now every call names the manager instance: the idle workers
// are told MANAGER_RESTARTED, register again, and every id is distinct.
TEST(FailureTest, RestartedManagerNeverLetsTwoWorkersShareAnId) {
  const std::string address = "127.0.0.1:" + std::to_string(FreePort());
  // Heartbeats every TTL/4 = 7.5 s: the restart and the third worker's registration fit
  // between two heartbeats of the idle workers (most of the time on the old code).
  const std::vector<std::string> manager_argv = {
      KVPOOL_MANAGER_BIN, "--listen", address,          "--model", "tiny-gpt2",
      "--num-blocks",     "128",      "--lease-ttl-ms", "30000"};
  auto manager = std::make_unique<Subprocess>(manager_argv);
  ASSERT_TRUE(manager->ReadLine(std::chrono::seconds(10)).has_value());
  const std::vector<std::string> worker_args = {"--model", "tiny-gpt2", "--threads", "1"};
  WorkerProcess first(address, worker_args), second(address, worker_args);
  ASSERT_FALSE(first.address().empty());
  ASSERT_FALSE(second.address().empty());
  const v1::GenerateRequest request = GreedyRequest(RandomTokens(48, 61), 16, v1::KV_MODE_PAGED);
  auto first_stub = first.NewStub();
  const GenerateOutcome fresh = Generate(*first_stub, request);
  ASSERT_TRUE(fresh.status.ok()) << fresh.status.error_message();

  manager->SignalAndWait(SIGKILL, std::chrono::seconds(10));
  manager = std::make_unique<Subprocess>(manager_argv);
  ASSERT_TRUE(manager->ReadLine(std::chrono::seconds(10)).has_value());
  WorkerProcess third(address, worker_args);
  ASSERT_FALSE(third.address().empty());

  // The idle workers find out at their next heartbeat and attach to the new instance.
  ASSERT_TRUE(WaitUntil(
      [&] {
        return WorkerStats(first).reattachments_total() == 1 &&
               WorkerStats(second).reattachments_total() == 1;
      },
      std::chrono::seconds(25)))
      << "reattachments: " << WorkerStats(first).reattachments_total() << ", "
      << WorkerStats(second).reattachments_total();
  std::set<int64_t> ids;
  for (WorkerProcess* worker : {&first, &second, &third}) {
    const v1::GetWorkerStatsResponse stats = WorkerStats(*worker);
    EXPECT_TRUE(stats.attached());
    ids.insert(stats.worker_id());
  }
  EXPECT_EQ(ids.size(), 3u) << "two workers share an id";
  // Every worker serves the prompt as a fresh single-worker run did (the first one
  // from the new pool's prefix cache, the others too once it is cached).
  for (WorkerProcess* worker : {&third, &first, &second}) {
    auto stub = worker->NewStub();
    GenerateOutcome out;
    ASSERT_TRUE(WaitUntil(
        [&] {
          out = Generate(*stub, request);
          return out.status.ok();
        },
        std::chrono::seconds(10)))
        << out.status.error_message();
    EXPECT_EQ(out.tokens, fresh.tokens);
  }
  auto manager_stub =
      v1::CacheManager::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  std::string violation;
  EXPECT_TRUE(ManagerInvariantsHold(*manager_stub, &violation)) << violation;
  manager->SignalAndWait(SIGTERM, std::chrono::seconds(10));
}

grpc::health::v1::HealthCheckResponse::ServingStatus Health(const std::string& address) {
  auto stub = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status =
      stub->Check(&context, grpc::health::v1::HealthCheckRequest(), &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response.status();
}

TEST(FailureTest, WorkerIsNotServingUntilAManagerAnswers) {
  const std::string address = "127.0.0.1:" + std::to_string(FreePort());
  Subprocess worker({KVPOOL_WORKER_BIN, "--manager", address, "--listen", "127.0.0.1:0", "--model",
                     "tiny-gpt2", "--threads", "1"});
  const std::optional<std::string> line = worker.ReadLine(std::chrono::seconds(60));
  ASSERT_TRUE(line.has_value());
  const std::string worker_address = line->substr(line->rfind(' ') + 1);
  EXPECT_EQ(Health(worker_address), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  auto stub =
      v1::Worker::NewStub(grpc::CreateChannel(worker_address, grpc::InsecureChannelCredentials()));
  GenerateOutcome early =
      Generate(*stub, GreedyRequest(RandomTokens(10, 41), 4, v1::KV_MODE_PAGED));
  EXPECT_EQ(early.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(early.status.error_message().find("not attached"), std::string::npos);

  Subprocess manager(
      {KVPOOL_MANAGER_BIN, "--listen", address, "--model", "tiny-gpt2", "--num-blocks", "64"});
  ASSERT_TRUE(manager.ReadLine(std::chrono::seconds(10)).has_value());
  bool attached = false;
  while (std::optional<std::string> next = worker.ReadLine(std::chrono::seconds(20))) {
    if (next->rfind("kvpool-worker attached to ", 0) == 0) {
      attached = true;
      break;
    }
  }
  ASSERT_TRUE(attached);
  EXPECT_TRUE(WaitUntil(
      [&] { return Health(worker_address) == grpc::health::v1::HealthCheckResponse::SERVING; },
      std::chrono::seconds(2)));
  GenerateOutcome served =
      Generate(*stub, GreedyRequest(RandomTokens(10, 41), 4, v1::KV_MODE_PAGED));
  EXPECT_TRUE(served.status.ok()) << served.status.error_message();
  EXPECT_TRUE(worker.SignalAndWait(SIGTERM, std::chrono::seconds(10)).has_value());
  manager.SignalAndWait(SIGTERM, std::chrono::seconds(10));
}

TEST(FailureTest, WorkerRefusesAPoolThatCannotHoldItsModel) {
  ManagerProcess manager({"--model", "gpt2", "--num-blocks", "16"});
  ASSERT_FALSE(manager.address().empty());
  Subprocess worker({KVPOOL_WORKER_BIN, "--manager", manager.address(), "--listen", "127.0.0.1:0",
                     "--model", "tiny-gpt2", "--threads", "1"});
  ASSERT_TRUE(worker.ReadLine(std::chrono::seconds(60)).has_value());  // listening
  // It exits 1 by itself once the manager has described its pool (signal 0: only wait).
  const std::optional<int> status = worker.SignalAndWait(0, std::chrono::seconds(20));
  ASSERT_TRUE(status.has_value());
  ASSERT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 1);
}

TEST(FailureTest, WorkerWithANameTheManagerRefusesExitsNamingIt) {
  ManagerProcess manager({"--model", "tiny-gpt2", "--num-blocks", "16"});
  ASSERT_FALSE(manager.address().empty());
  Subprocess worker({KVPOOL_WORKER_BIN, "--manager", manager.address(), "--listen", "127.0.0.1:0",
                     "--model", "tiny-gpt2", "--threads", "1", "--name", std::string(300, 'n')},
                    MergedStderr());
  std::string output;
  while (std::optional<std::string> line = worker.ReadLine(std::chrono::seconds(30))) {
    output += *line + "\n";
  }
  const std::optional<int> status = worker.SignalAndWait(0, std::chrono::seconds(20));
  ASSERT_TRUE(status.has_value());
  ASSERT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 1);
  EXPECT_NE(output.find("worker_name has 300 bytes"), std::string::npos) << output;
}

}  // namespace
}  // namespace kvpool::integration
