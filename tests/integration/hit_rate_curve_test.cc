// The predicted hit-rate curve on the real services (tiny-gpt2): a mixed workload of
// shared system prompts and unique prompts runs serially on a large pool; the curve it
// records predicts the hit rate a smaller pool has, and rerunning the same workload on
// a manager of that size measures it. Also: the curve on GetStats, /api/stats and
// /metrics agree, and a client sees only its own tenant's curves.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>

#include "system_harness.h"

namespace kvpool::integration {
namespace {

using manager::testing::HttpGet;

// 140 prompts: one of six shared prefixes (3..7 blocks of 16 tokens, picked 1/(i+1)) and
// a suffix of its own, or (one in five) a prompt sharing nothing.
std::vector<std::vector<int32_t>> MixedWorkload() {
  std::mt19937 rng(7);
  std::vector<std::vector<int32_t>> prefixes;
  for (int p = 0; p < 6; ++p) prefixes.push_back(RandomTokens(16 * (3 + p % 5), 100 + p, 5000));
  std::discrete_distribution<int> pick({1.0, 1.0 / 2, 1.0 / 3, 1.0 / 4, 1.0 / 5, 1.0 / 6});
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 140; ++i) {
    std::vector<int32_t> prompt;
    if (i % 5 == 4) {
      prompt = RandomTokens(64, 1000 + i, 5000);
    } else {
      prompt = prefixes[static_cast<size_t>(pick(rng))];
      const std::vector<int32_t> suffix =
          RandomTokens(8 + static_cast<int>(rng() % 33), 2000 + i, 5000);
      prompt.insert(prompt.end(), suffix.begin(), suffix.end());
    }
    prompts.push_back(std::move(prompt));
  }
  return prompts;
}

// Runs the workload serially on a fresh manager of `num_blocks` and returns its
// GetStats after.
v1::GetStatsResponse RunWorkload(int64_t num_blocks) {
  ManagerProcess manager({"--model", "tiny-gpt2", "--num-blocks", std::to_string(num_blocks)});
  EXPECT_FALSE(manager.address().empty());
  WorkerProcess worker(manager.address(), {"--model", "tiny-gpt2", "--threads", "1"});
  EXPECT_FALSE(worker.address().empty());
  if (worker.address().empty()) return {};
  auto stub = worker.NewStub();
  for (const std::vector<int32_t>& prompt : MixedWorkload()) {
    const GenerateOutcome out = Generate(*stub, GreedyRequest(prompt, 4, v1::KV_MODE_PAGED));
    EXPECT_TRUE(out.status.ok()) << out.status.error_message();
  }
  auto manager_stub = manager.NewStub();
  return ManagerStats(*manager_stub);
}

double Measured(const v1::GetStatsResponse& stats) {
  return static_cast<double>(stats.prefix_hits_tokens()) /
         static_cast<double>(stats.prefix_queries_tokens());
}

// The overall since-start curve at `blocks` (a size the curve lists).
double Predicted(const v1::GetStatsResponse& stats, int64_t blocks) {
  const v1::HitRateCurves& c = stats.hit_rate_curves();
  for (const v1::HitRateCurve& curve : c.curves()) {
    if (!curve.tenant().empty() || curve.window()) continue;
    for (int i = 0; i < c.cache_blocks_size(); ++i) {
      if (c.cache_blocks(i) == blocks) return curve.hit_rate(i);
    }
  }
  ADD_FAILURE() << "no overall curve at " << blocks << " blocks";
  return -1;
}

TEST(HitRateCurveTest, PredictsTheHitRateOfASmallerPoolWithin3Points) {
  const v1::GetStatsResponse large = RunWorkload(512);
  ASSERT_GT(large.prefix_queries_tokens(), 0);
  EXPECT_EQ(large.evictions(), 0);
  EXPECT_EQ(large.hit_rate_curves().pool_blocks(), 512);
  EXPECT_EQ(large.hit_rate_curves().exact_blocks(), 2048);
  // At its own size the pool evicted nothing: the curve says what it measured.
  EXPECT_NEAR(Predicted(large, 512), Measured(large), 0.005);
  for (int64_t small : {24, 40}) {
    const double predicted = Predicted(large, small);
    const v1::GetStatsResponse measured = RunWorkload(small);
    ASSERT_GT(measured.evictions(), 0) << small << " blocks must be under pressure";
    EXPECT_NEAR(predicted, Measured(measured), 0.03) << "at " << small << " blocks";
    std::printf("%lld blocks: predicted %.4f, measured %.4f (512 blocks: %.4f)\n",
                static_cast<long long>(small), predicted, Measured(measured), Measured(large));
    // And the small pool is worth predicting: it loses hits.
    EXPECT_LT(predicted, Measured(large) - 0.05) << "at " << small << " blocks";
  }
}

TEST(HitRateCurveTest, CurvesOnGetStatsApiStatsAndMetricsAgree) {
  ManagerProcess manager(
      {"--model", "tiny-gpt2", "--num-blocks", "64", "--hit-rate-window-s", "60"});
  ASSERT_FALSE(manager.address().empty());
  WorkerProcess worker(manager.address(), {"--model", "tiny-gpt2", "--threads", "1"});
  ASSERT_FALSE(worker.address().empty());
  auto stub = worker.NewStub();
  const std::vector<int32_t> prompt = RandomTokens(80, 5, 5000);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(Generate(*stub, GreedyRequest(prompt, 4, v1::KV_MODE_PAGED)).status.ok());
  }
  auto manager_stub = manager.NewStub();
  const v1::GetStatsResponse stats = ManagerStats(*manager_stub);
  const v1::HitRateCurves& c = stats.hit_rate_curves();
  EXPECT_EQ(c.window_seconds(), 60);
  ASSERT_EQ(c.curves_size(), 4);  // overall and tenant "default"; since start and window
  // 80 tokens: 4 full blocks looked up (one token left to compute); the 2nd and 3rd
  // requests hit all four at any size that holds the prompt and its 4 generated tokens.
  EXPECT_NEAR(Predicted(stats, 64), 2.0 * 64 / (3 * 80), 1e-9);
  EXPECT_NEAR(Predicted(stats, 64), Measured(stats), 1e-9);

  const std::string response = HttpGet(manager.http_address(), "/api/stats");
  ASSERT_NE(response.find("\r\n\r\n"), std::string::npos) << response;
  const nlohmann::json api =
      nlohmann::json::parse(response.substr(response.find("\r\n\r\n") + 4))["hit_rate_curves"];
  EXPECT_EQ(api["pool_blocks"], 64);
  ASSERT_EQ(api["cache_blocks"].size(), static_cast<size_t>(c.cache_blocks_size()));
  ASSERT_EQ(api["curves"].size(), 4u);
  EXPECT_EQ(api["curves"][0]["hit_rate"].size(), static_cast<size_t>(c.cache_blocks_size()));
  EXPECT_DOUBLE_EQ(api["curves"][0]["hit_rate"][63].get<double>(), c.curves(0).hit_rate(63));

  const std::string metrics = HttpGet(manager.http_address(), "/metrics");
  EXPECT_THAT(metrics,
              ::testing::HasSubstr(
                  "kvpool_prefix_cache_predicted_hit_rate{pool_scale=\"1\",over=\"start\"}"));
}

}  // namespace
}  // namespace kvpool::integration
