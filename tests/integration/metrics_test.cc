// Observability after real traffic: the worker's /metrics (the names of
// shared/DESIGN.md, histograms whose counts match what was served), its /healthz,
// and the manager's /api/stats, which carries the load the worker reported with its
// heartbeats.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <regex>

#include "system_harness.h"

namespace kvpool::integration {
namespace {

using manager::testing::HttpGet;
using ::testing::HasSubstr;

// The value of the unlabelled sample `name` in a Prometheus scrape; -1 when absent.
double Sample(const std::string& scrape, const std::string& name) {
  const std::regex line("(^|\n)" + std::regex_replace(name, std::regex(R"([{}"+\[\]])"), R"(\$&)") +
                        R"( ([-+0-9.eE]+|\+Inf)\n)");
  std::smatch m;
  if (!std::regex_search(scrape, m, line)) return -1;
  return std::stod(m[2]);
}

nlohmann::json Body(const std::string& response) {
  const size_t start = response.find("\r\n\r\n");
  return start == std::string::npos ? nlohmann::json()
                                    : nlohmann::json::parse(response.substr(start + 4), nullptr,
                                                            /*allow_exceptions=*/false);
}

TEST(MetricsTest, WorkerAndManagerMetricsMoveWithTraffic) {
  // A short lease, so that heartbeats (every TTL/4) bring the load to the manager fast.
  ManagerProcess manager({"--model", "tiny-gpt2", "--num-blocks", "128", "--lease-ttl-ms", "800"});
  ASSERT_FALSE(manager.address().empty());
  WorkerProcess worker(manager.address(), {"--model", "tiny-gpt2", "--threads", "1"});
  ASSERT_FALSE(worker.address().empty());
  ASSERT_FALSE(worker.http_address().empty());

  const auto started = std::chrono::steady_clock::now();
  const std::string before = HttpGet(worker.http_address(), "/metrics");
  ASSERT_THAT(before, HasSubstr("HTTP/1.1 200"));
  EXPECT_EQ(Sample(before, "kvpool_time_to_first_token_seconds_count"), 0);
  EXPECT_EQ(Sample(before, "kvpool_worker_attached"), 1);

  constexpr int kRequests = 3, kTokens = 12;
  const std::vector<int32_t> shared = RandomTokens(48, 7);
  auto stub = worker.NewStub();
  for (int i = 0; i < kRequests; ++i) {
    std::vector<int32_t> prompt = shared;
    prompt.push_back(100 + i);
    const GenerateOutcome out = Generate(*stub, GreedyRequest(prompt, kTokens, v1::KV_MODE_PAGED));
    ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  }

  // The running gauge follows at the scheduler's next iteration.
  std::string scrape;
  EXPECT_TRUE(WaitUntil(
      [&] {
        scrape = HttpGet(worker.http_address(), "/metrics");
        return Sample(scrape, "kvpool_requests_running") == 0;
      },
      std::chrono::seconds(5)));
  EXPECT_EQ(Sample(scrape, "kvpool_time_to_first_token_seconds_count"), kRequests);
  EXPECT_EQ(Sample(scrape, "kvpool_time_to_first_token_seconds_bucket{le=\"+Inf\"}"), kRequests);
  EXPECT_GT(Sample(scrape, "kvpool_time_to_first_token_seconds_sum"), 0);
  EXPECT_EQ(Sample(scrape, "kvpool_inter_token_latency_seconds_count"), kRequests * (kTokens - 1));
  EXPECT_EQ(Sample(scrape, "kvpool_e2e_request_latency_seconds_count"), kRequests);
  EXPECT_EQ(Sample(scrape, "kvpool_generation_tokens_total"), kRequests * kTokens);
  EXPECT_EQ(Sample(scrape, "kvpool_prompt_tokens_total"), kRequests * 49);
  EXPECT_EQ(Sample(scrape, "kvpool_prompt_cached_tokens_total"), (kRequests - 1) * 48);
  EXPECT_EQ(Sample(scrape, "kvpool_requests_finished_total"), kRequests);
  EXPECT_EQ(Sample(scrape, "kvpool_requests_running"), 0);
  EXPECT_EQ(Sample(scrape, "kvpool_requests_waiting"), 0);
  EXPECT_EQ(Sample(scrape, "kvpool_preemptions_total"), 0);
  EXPECT_EQ(Sample(scrape, "kvpool_recomputed_tokens_total"), 0);
  // The scheduler's time by phase: forwards, manager calls and waiting all happened;
  // nothing was recomputed.
  for (const char* phase : {"prefill", "decode", "manager", "idle", "other"}) {
    EXPECT_GT(
        Sample(scrape, std::string("kvpool_scheduler_seconds_total{phase=\"") + phase + "\"}"), 0)
        << phase;
  }
  EXPECT_EQ(Sample(scrape, "kvpool_scheduler_seconds_total{phase=\"recompute\"}"), 0);
  // The forwards all ran between the two scrapes (the waits may have begun before).
  EXPECT_LE(Sample(scrape, "kvpool_scheduler_seconds_total{phase=\"prefill\"}") +
                Sample(scrape, "kvpool_scheduler_seconds_total{phase=\"decode\"}"),
            std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  EXPECT_THAT(scrape, HasSubstr("# TYPE kvpool_inter_token_latency_seconds histogram"));
  EXPECT_THAT(scrape, HasSubstr("# TYPE kvpool_generation_tokens_total counter"));
  EXPECT_THAT(HttpGet(worker.http_address(), "/healthz"), HasSubstr("200 OK"));

  const std::string manager_scrape = HttpGet(manager.http_address(), "/metrics");
  EXPECT_EQ(Sample(manager_scrape, "kvpool_prefix_cache_hits_tokens_total"), (kRequests - 1) * 48);
  EXPECT_EQ(Sample(manager_scrape, "kvpool_prefix_cache_queries_tokens_total"), kRequests * 49);

  // The next heartbeat carries these counters to the manager's dashboard JSON. A
  // heartbeat may fall between a request's last token and its retirement (the client
  // has its summary, the finished count is not yet up), so wait for both.
  nlohmann::json stats;
  EXPECT_TRUE(WaitUntil(
      [&] {
        stats = Body(HttpGet(manager.http_address(), "/api/stats"));
        return stats.is_object() &&
               stats["totals"]["generated_tokens_total"] == kRequests * kTokens &&
               stats["totals"]["requests_finished_total"] == kRequests;
      },
      std::chrono::seconds(5)))
      << stats.dump();
  EXPECT_EQ(stats["totals"]["ttft_count"], kRequests);
  EXPECT_EQ(stats["totals"]["itl_count"], kRequests * (kTokens - 1));
  EXPECT_EQ(stats["totals"]["requests_finished_total"], kRequests);
  ASSERT_EQ(stats["workers"].size(), 1u);
  EXPECT_EQ(stats["prefix_cache"]["hits_tokens_total"], (kRequests - 1) * 48);
}

}  // namespace
}  // namespace kvpool::integration
