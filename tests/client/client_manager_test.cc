// kvpool::Client against the real kvpool-manager binary on loopback: manager stats and
// health, gRPC errors mapped with the server's message intact, bearer tokens, the retry
// rule (round-robin past a dead address; a pinned dead address and a dead Generate fail
// UNAVAILABLE after max_attempts in bounded time) and many threads sharing one Client.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <thread>

#include "kvpool/client.h"
#include "tests/client/test_util.h"
#include "tests/manager/service/manager_process.h"

namespace kvpool {
namespace {

using ::kvpool::manager::testing::ManagerProcess;
using ::kvpool::testing::ClosedAddress;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

constexpr int kNumBlocks = 64;

class ClientManagerTest : public ::testing::Test {
 protected:
  ClientManagerTest() : manager_({"--model", "gpt2", "--num-blocks", std::to_string(kNumBlocks)}) {}

  ClientOptions Options(std::vector<std::string> addresses) const {
    ClientOptions options;
    options.addresses = std::move(addresses);
    options.deadline = std::chrono::seconds(5);
    options.retry_backoff = std::chrono::milliseconds(50);
    return options;
  }

  ManagerProcess manager_;
};

TEST_F(ClientManagerTest, ManagerStatsAndHealth) {
  Client client(Options({manager_.address()}));
  const StatusOr<v1::GetStatsResponse> stats = client.ManagerStats();
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->num_blocks(), kNumBlocks);
  EXPECT_EQ(stats->free_blocks(), kNumBlocks);
  EXPECT_EQ(stats->num_workers(), 0);
  const StatusOr<bool> healthy = client.Healthy(0);
  ASSERT_TRUE(healthy.ok()) << healthy.status().ToString();
  EXPECT_TRUE(*healthy);
}

TEST_F(ClientManagerTest, WorkerCallsOnAManagerAreUnimplementedWithoutRetry) {
  Client client(Options({manager_.address()}));
  EXPECT_EQ(client.WorkerStats().status().code(), StatusCode::kUnimplemented);
  EXPECT_EQ(client.ModelInfo().status().code(), StatusCode::kUnimplemented);
  GenerateParams params;
  params.prompt = "hi";
  int tokens = 0;
  const StatusOr<GenerateResult> result = client.Generate(params, [&](const TokenEvent&) {
    ++tokens;
    return true;
  });
  EXPECT_EQ(result.status().code(), StatusCode::kUnimplemented);
  EXPECT_EQ(tokens, 0);
}

TEST(ClientAuthTest, SendsTheBearerTokenAndKeepsTheServerMessage) {
  const std::string tokens = testing::WriteTempFile("tokens", "secret-a tenant-a\n");
  ManagerProcess manager({"--model", "gpt2", "--num-blocks", "8", "--auth-token-file", tokens});
  ClientOptions options;
  options.addresses = {manager.address()};
  EXPECT_EQ(Client(options).ManagerStats().status().code(), StatusCode::kUnauthenticated);

  // The SDK's message is exactly what the server said to a raw stub.
  v1::GetStatsResponse ignored;
  const grpc::Status raw =
      manager.NewStub()->GetStats(manager::testing::Ctx("wrong").get(), {}, &ignored);
  options.token = "wrong";
  const Status mapped = Client(options).ManagerStats().status();
  EXPECT_EQ(mapped.code(), StatusCode::kUnauthenticated);
  EXPECT_FALSE(raw.error_message().empty());
  EXPECT_EQ(mapped.message(), raw.error_message());

  options.token = "secret-a";
  const StatusOr<v1::GetStatsResponse> stats = Client(options).ManagerStats();
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->num_blocks(), 8);
  std::remove(tokens.c_str());
}

TEST_F(ClientManagerTest, RoundRobinRetriesPastADeadAddress) {
  Client client(Options({ClosedAddress(), manager_.address()}));
  // Two calls: round-robin starts one of them on the dead address.
  for (int call = 0; call < 2; ++call) {
    const StatusOr<v1::GetStatsResponse> stats = client.ManagerStats();
    ASSERT_TRUE(stats.ok()) << call << ": " << stats.status().ToString();
    EXPECT_EQ(stats->num_blocks(), kNumBlocks);
    const StatusOr<bool> healthy = client.Healthy();
    ASSERT_TRUE(healthy.ok()) << call << ": " << healthy.status().ToString();
    EXPECT_TRUE(*healthy);
  }
  // Pinned to the live address, no retry is needed.
  EXPECT_TRUE(client.ManagerStats(1).ok());
}

TEST_F(ClientManagerTest, PinnedDeadAddressFailsUnavailableAfterMaxAttempts) {
  ClientOptions options = Options({ClosedAddress(), manager_.address()});
  options.max_attempts = 3;
  Client client(options);
  const auto start = Clock::now();
  const StatusOr<v1::GetStatsResponse> stats = client.ManagerStats(0);
  const auto elapsed = Clock::now() - start;
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().code(), StatusCode::kUnavailable);
  EXPECT_GE(elapsed, 2 * options.retry_backoff);  // two retries, each after the backoff
  EXPECT_LT(elapsed, std::chrono::seconds(5));
}

TEST(ClientRetryTest, GenerateAgainstClosedPortsIsUnavailableInBoundedTime) {
  ClientOptions options;
  options.addresses = {ClosedAddress(), ClosedAddress()};
  options.max_attempts = 4;
  options.retry_backoff = std::chrono::milliseconds(50);
  Client client(options);
  GenerateParams params;
  params.token_ids = {1, 2, 3};
  params.max_tokens = 2;
  for (int call = 0; call < 2; ++call) {
    const auto start = Clock::now();
    const StatusOr<GenerateResult> result = client.Generate(params);
    const auto elapsed = Clock::now() - start;
    ASSERT_FALSE(result.ok());
    EXPECT_EQ(result.status().code(), StatusCode::kUnavailable);
    EXPECT_THAT(result.status().message(), HasSubstr("127.0.0.1"));
    EXPECT_GE(elapsed, 3 * options.retry_backoff);
    EXPECT_LT(elapsed, std::chrono::seconds(5));
  }
  // The iterator form ends the same way.
  StatusOr<std::unique_ptr<GenerateStream>> stream = client.Stream(params);
  ASSERT_TRUE(stream.ok());
  TokenEvent event;
  EXPECT_FALSE((*stream)->Next(&event));
  EXPECT_EQ((*stream)->Finish().status().code(), StatusCode::kUnavailable);
}

TEST(ClientRetryTest, CancelStopsTheRetryBackoff) {
  ClientOptions options;
  options.addresses = {ClosedAddress()};
  options.max_attempts = 100;
  options.retry_backoff = std::chrono::seconds(1);
  Client client(options);
  GenerateParams params;
  params.prompt = "hi";
  StatusOr<std::unique_ptr<GenerateStream>> stream = client.Stream(params);
  ASSERT_TRUE(stream.ok());
  std::thread canceller([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    (*stream)->Cancel();
  });
  const auto start = Clock::now();
  const StatusOr<GenerateResult> result = (*stream)->Finish();
  canceller.join();
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(3));
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), StatusCode::kCancelled);
}

TEST_F(ClientManagerTest, ManyThreadsShareOneClient) {
  Client client(Options({manager_.address(), manager_.address()}));
  constexpr int kThreads = 8, kCallsPerThread = 25;
  std::atomic<int> ok_calls{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kCallsPerThread; ++i) {
        if (client.ManagerStats().ok()) ++ok_calls;
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(ok_calls.load(), kThreads * kCallsPerThread);
}

}  // namespace
}  // namespace kvpool
