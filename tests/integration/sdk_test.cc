// The SDK and the CLI against the real system, started the way a user starts it:
// `kvpool up --workers 2` (one manager, two workers on free loopback ports), then
// kvpool::Client across both workers, and a clean stop on SIGTERM.
#include <gtest/gtest.h>

#include <csignal>

#include "kvpool/client.h"
#include "system_harness.h"

namespace kvpool::integration {
namespace {

TEST(SdkTest, KvpoolUpServesTheSdkAcrossWorkersAndStopsCleanly) {
  Subprocess up({KVPOOL_CLI_BIN, "up", "--workers", "2", "--model", "tiny-gpt2", "--threads", "1",
                 "--num-blocks", "128"});
  std::string manager;
  std::vector<std::string> workers;
  bool ready = false;
  while (std::optional<std::string> line = up.ReadLine(std::chrono::seconds(120))) {
    if (line->rfind("manager ", 0) == 0) manager = line->substr(8);
    if (line->rfind("worker ", 0) == 0) workers.push_back(line->substr(7));
    if (*line == "ready") {
      ready = true;
      break;
    }
  }
  ASSERT_TRUE(ready);
  ASSERT_EQ(workers.size(), 2u);

  ClientOptions options;
  options.addresses = workers;
  options.deadline = std::chrono::seconds(60);
  Client client(options);
  GenerateParams params;
  params.token_ids = RandomTokens(30, 51);
  params.max_tokens = 12;
  params.mode = "paged";
  params.ignore_eos = true;
  std::vector<std::string> servers;
  std::vector<std::vector<int32_t>> outputs;
  for (int i = 0; i < 4; ++i) {
    int streamed = 0;
    StatusOr<GenerateResult> result = client.Generate(params, [&](const TokenEvent& event) {
      EXPECT_EQ(event.index, 0);
      ++streamed;
      return true;
    });
    ASSERT_TRUE(result.ok()) << result.status().ToString();
    EXPECT_EQ(streamed, 12);
    EXPECT_EQ(result->summary.usage().completion_tokens(), 12);
    EXPECT_GT(result->client_ttft_s, 0);
    servers.push_back(result->server);
    outputs.push_back(result->tokens[0]);
  }
  // Round-robin: both workers served, and gave the same greedy tokens.
  EXPECT_NE(servers[0], servers[1]);
  for (const auto& tokens : outputs) EXPECT_EQ(tokens, outputs[0]);
  // The second request of the same prompt hit the prefix the first one committed.
  StatusOr<std::unique_ptr<GenerateStream>> stream = client.Stream(params);
  ASSERT_TRUE(stream.ok());
  TokenEvent event;
  int read = 0;
  while ((*stream)->Next(&event)) ++read;
  StatusOr<GenerateResult> streamed = (*stream)->Finish();
  ASSERT_TRUE(streamed.ok()) << streamed.status().ToString();
  EXPECT_EQ(read, 12);
  EXPECT_EQ(streamed->summary.usage().cached_tokens(), 16);

  ClientOptions manager_options;
  manager_options.addresses = {manager};
  Client manager_client(manager_options);
  StatusOr<v1::GetStatsResponse> stats = manager_client.ManagerStats();
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->num_workers(), 2);
  EXPECT_EQ(stats->in_use_blocks(), 0);
  StatusOr<bool> healthy = client.Healthy(1);
  ASSERT_TRUE(healthy.ok());
  EXPECT_TRUE(*healthy);

  const std::optional<int> status = up.SignalAndWait(SIGTERM, std::chrono::seconds(20));
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << "wait status " << *status;
  // Everything it started is gone.
  EXPECT_FALSE(client.Healthy(0).ok());
  EXPECT_FALSE(manager_client.ManagerStats().ok());
}

}  // namespace
}  // namespace kvpool::integration
