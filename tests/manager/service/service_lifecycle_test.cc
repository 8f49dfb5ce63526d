// The process-level contract of kvpool-manager: a SIGKILLed worker's blocks come back
// within 2 x lease TTL; SIGTERM exits 0 and unlinks the shm pool; a restart removes
// segments left by a dead manager; /metrics exposes the documented names after
// traffic; the dashboard serves its page and live JSON; grpc.health.v1 Check answers
// SERVING.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "grpc/health/v1/health.grpc.pb.h"
#include "tests/manager/service/manager_process.h"

namespace kvpool::manager::testing {
namespace {

using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

bool ShmExists(const std::string& name) { return access(("/dev/shm" + name).c_str(), F_OK) == 0; }

TEST(ServiceLifecycleTest, KilledWorkersBlocksReturnWithinTwoLeaseTtls) {
  constexpr int kTtlMs = 500;
  ManagerProcess manager(
      {"--model", "tiny-llama", "--num-blocks", "256", "--lease-ttl-ms", std::to_string(kTtlMs)});
  ASSERT_FALSE(manager.address().empty());
  auto stub = manager.NewStub();
  Subprocess worker({KVPOOL_TEST_CLIENT_BIN, manager.address(), "6"});
  const std::optional<std::string> ready = worker.ReadLine(std::chrono::seconds(10));
  ASSERT_TRUE(ready.has_value());
  ASSERT_THAT(*ready, HasSubstr("ready"));

  // Heartbeats keep it alive across several TTLs.
  std::this_thread::sleep_for(std::chrono::milliseconds(3 * kTtlMs));
  v1::GetStatsResponse stats;
  ASSERT_TRUE(stub->GetStats(Ctx().get(), {}, &stats).ok());
  EXPECT_EQ(stats.num_workers(), 1);
  EXPECT_EQ(stats.num_sequences(), 6);
  EXPECT_GT(stats.in_use_blocks(), 0);

  ASSERT_TRUE(worker.SignalAndWait(SIGKILL, std::chrono::seconds(5)).has_value());
  const auto killed = Clock::now();
  while (true) {
    ASSERT_TRUE(stub->GetStats(Ctx().get(), {}, &stats).ok());
    if (stats.in_use_blocks() == 0) break;
    ASSERT_LT(Clock::now() - killed, std::chrono::milliseconds(2 * kTtlMs))
        << stats.in_use_blocks() << " blocks still in use";
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(stats.num_sequences(), 0);
  EXPECT_EQ(stats.num_workers(), 0);
  EXPECT_EQ(stats.expired_leases(), 1);
  v1::CheckInvariantsResponse check;
  ASSERT_TRUE(stub->CheckInvariants(Ctx().get(), {}, &check).ok());
  EXPECT_TRUE(check.ok()) << check.violation();
}

TEST(ServiceLifecycleTest, SigtermExitsZeroAndUnlinksThePool) {
  ManagerProcess manager({"--model", "tiny-gpt2", "--num-blocks", "32"});
  ASSERT_FALSE(manager.address().empty());
  auto stub = manager.NewStub();
  v1::RegisterWorkerResponse worker;
  ASSERT_TRUE(stub->RegisterWorker(Ctx().get(), {}, &worker).ok());
  const std::string shm = worker.pool().shm_name();
  ASSERT_TRUE(ShmExists(shm)) << shm;

  const std::optional<int> status =
      manager.process().SignalAndWait(SIGTERM, std::chrono::seconds(5));
  ASSERT_TRUE(status.has_value()) << "kvpool-manager did not exit within 5 s of SIGTERM";
  ASSERT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 0);
  EXPECT_FALSE(ShmExists(shm)) << shm;
}

TEST(ServiceLifecycleTest, RestartRemovesSegmentsOfDeadManagers) {
  const pid_t dead = fork();
  if (dead == 0) _exit(0);
  ASSERT_EQ(waitpid(dead, nullptr, 0), dead);
  const std::string stale = "/kvpool-" + std::to_string(dead) + "-deadbeef";
  std::ofstream("/dev/shm" + stale) << "stale";
  ASSERT_TRUE(ShmExists(stale));
  ManagerProcess manager({"--model", "tiny-gpt2", "--num-blocks", "8"});
  ASSERT_FALSE(manager.address().empty());
  EXPECT_FALSE(ShmExists(stale));
}

// A second manager on the node (a rolling update, another pod sharing the host's IPC
// namespace) must never take a live manager's pool for a stale one.
TEST(ServiceLifecycleTest, RestartKeepsSegmentsOfLiveManagers) {
  ManagerProcess first({"--model", "tiny-gpt2", "--num-blocks", "8"});
  ASSERT_FALSE(first.address().empty());
  auto stub = first.NewStub();
  v1::RegisterWorkerResponse worker;
  ASSERT_TRUE(stub->RegisterWorker(Ctx().get(), {}, &worker).ok());
  const std::string live = worker.pool().shm_name();
  ASSERT_TRUE(ShmExists(live));
  ManagerProcess second({"--model", "tiny-gpt2", "--num-blocks", "8"});
  ASSERT_FALSE(second.address().empty());
  EXPECT_TRUE(ShmExists(live));
}

// A paged sequence of 20 prompt tokens (2 blocks of tiny-gpt2's 16) and 4 new tokens.
grpc::Status OpenTwentyTokenSequence(v1::CacheManager::Stub& stub, int64_t worker_id,
                                     const std::string& instance) {
  v1::OpenSequenceRequest open;
  open.set_worker_id(worker_id);
  open.set_manager_instance(instance);
  for (int i = 0; i < 20; ++i) open.add_token_ids(i);
  open.set_max_tokens(4);
  open.set_mode(v1::SEQUENCE_MODE_PAGED);
  v1::OpenSequenceResponse opened;
  return stub.OpenSequence(Ctx().get(), open, &opened);
}

TEST(ServiceLifecycleTest, MetricsAfterTraffic) {
  ManagerProcess manager({"--model", "tiny-gpt2", "--num-blocks", "64"});
  ASSERT_FALSE(manager.address().empty());
  auto stub = manager.NewStub();
  v1::RegisterWorkerResponse worker;
  ASSERT_TRUE(stub->RegisterWorker(Ctx().get(), {}, &worker).ok());
  ASSERT_TRUE(OpenTwentyTokenSequence(*stub, worker.worker_id(), worker.manager_instance()).ok());

  const std::string scrape = HttpGet(manager.http_address(), "/metrics");
  EXPECT_THAT(scrape, HasSubstr("HTTP/1.1 200"));
  for (const char* name :
       {"kvpool_kv_cache_usage_ratio ", "kvpool_prefix_cache_queries_tokens_total 20",
        "kvpool_prefix_cache_hits_tokens_total 0", "kvpool_evictions_total 0",
        "kvpool_blocks{state=\"free\"} 62", "kvpool_blocks{state=\"cached\"} 0",
        "kvpool_blocks{state=\"in_use\"} 2", "kvpool_sequences 1", "kvpool_workers 1",
        "kvpool_expired_leases_total 0",
        "kvpool_rpc_latency_seconds_bucket{method=\"OpenSequence\",le=\"+Inf\"} 1",
        "kvpool_rpc_latency_seconds_count{method=\"RegisterWorker\"} 1",
        "# TYPE kvpool_rpc_latency_seconds histogram"}) {
    EXPECT_THAT(scrape, HasSubstr(name));
  }
  EXPECT_THAT(HttpGet(manager.http_address(), "/healthz"), HasSubstr("ok"));
  EXPECT_THAT(HttpGet(manager.http_address(), "/nope"), HasSubstr("404"));
}

// The dashboard's JSON follows the pool and the load workers report with heartbeats;
// its page, script and Chart.js are served by the manager itself.
TEST(ServiceLifecycleTest, DashboardServesPageAndLiveStats) {
  const std::string chart_js = ::testing::TempDir() + "/chart-for-test.js";
  { std::ofstream(chart_js) << "window.Chart = function () {};"; }
  ManagerProcess manager({"--model", "tiny-gpt2", "--num-blocks", "64", "--chart-js", chart_js});
  ASSERT_FALSE(manager.address().empty());
  auto stub = manager.NewStub();
  v1::RegisterWorkerRequest register_request;
  register_request.set_worker_name("dash-worker");
  v1::RegisterWorkerResponse worker;
  ASSERT_TRUE(stub->RegisterWorker(Ctx().get(), register_request, &worker).ok());
  v1::HeartbeatRequest heartbeat;
  heartbeat.set_worker_id(worker.worker_id());
  heartbeat.set_manager_instance(worker.manager_instance());
  heartbeat.mutable_load()->set_requests_running(3);
  heartbeat.mutable_load()->set_requests_waiting(2);
  heartbeat.mutable_load()->set_generated_tokens_total(41);
  heartbeat.mutable_load()->set_ttft_sum_s(0.5);
  heartbeat.mutable_load()->set_ttft_count(4);
  v1::HeartbeatResponse beat;
  ASSERT_TRUE(stub->Heartbeat(Ctx().get(), heartbeat, &beat).ok());
  ASSERT_TRUE(OpenTwentyTokenSequence(*stub, worker.worker_id(), worker.manager_instance()).ok());

  const std::string stats = HttpGet(manager.http_address(), "/api/stats");
  ASSERT_THAT(stats, HasSubstr("HTTP/1.1 200"));
  const nlohmann::json j = nlohmann::json::parse(stats.substr(stats.find("\r\n\r\n") + 4));
  EXPECT_EQ(j["pool"]["model"], "tiny-gpt2");
  EXPECT_EQ(j["pool"]["num_blocks"], 64);
  EXPECT_EQ(j["pool"]["in_use_blocks"], 2);
  EXPECT_EQ(j["pool"]["free_blocks"], 62);
  EXPECT_EQ(j["prefix_cache"]["queries_tokens_total"], 20);
  EXPECT_EQ(j["sequences"], 1);
  ASSERT_EQ(j["workers"].size(), 1u);
  EXPECT_EQ(j["workers"][0]["name"], "dash-worker");
  EXPECT_EQ(j["workers"][0]["load"]["requests_running"], 3);
  EXPECT_EQ(j["totals"]["requests_waiting"], 2);
  EXPECT_EQ(j["totals"]["generated_tokens_total"], 41);
  EXPECT_DOUBLE_EQ(j["totals"]["ttft_sum_s"].get<double>(), 0.5);

  const std::string models = HttpGet(manager.http_address(), "/api/models");
  EXPECT_THAT(models, HasSubstr("\"llama-70b\""));
  EXPECT_THAT(models, HasSubstr("\"num_kv_heads\":8"));
  EXPECT_THAT(HttpGet(manager.http_address(), "/"), HasSubstr("<canvas id=\"chart-blocks\">"));
  EXPECT_THAT(HttpGet(manager.http_address(), "/dashboard.js"), HasSubstr("/api/stats"));
  EXPECT_THAT(HttpGet(manager.http_address(), "/chart.js"), HasSubstr("window.Chart"));
}

TEST(ServiceLifecycleTest, HealthCheckIsServing) {
  ManagerProcess manager({"--model", "tiny-gpt2", "--num-blocks", "8"});
  ASSERT_FALSE(manager.address().empty());
  auto health = grpc::health::v1::Health::NewStub(manager.channel());
  grpc::health::v1::HealthCheckRequest request;
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = health->Check(Ctx().get(), request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
}

}  // namespace
}  // namespace kvpool::manager::testing
