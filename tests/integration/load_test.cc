// Load on the whole system: 32 concurrent clients with mixed modes and lengths over
// two workers, then a pool too small for the load (preemption, no hang), and prefix
// sharing across workers with tenants kept apart (gpt2, bearer tokens).
#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <thread>

#include "system_harness.h"

namespace kvpool::integration {
namespace {

TEST(LoadTest, ThirtyTwoConcurrentClientsWithMixedModesAllComplete) {
  ManagerProcess manager({"--model", "tiny-gpt2", "--num-blocks", "1024"});
  ASSERT_FALSE(manager.address().empty());
  WorkerProcess a(manager.address(), {"--model", "tiny-gpt2", "--threads", "1"});
  WorkerProcess b(manager.address(), {"--model", "tiny-gpt2", "--threads", "1"});
  ASSERT_FALSE(a.address().empty());
  ASSERT_FALSE(b.address().empty());
  constexpr int kClients = 32;
  const v1::KvMode modes[] = {v1::KV_MODE_NONE, v1::KV_MODE_CONTIGUOUS, v1::KV_MODE_PAGED};
  std::vector<GenerateOutcome> outcomes(kClients);
  std::vector<int> expected(kClients);
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    expected[i] = 4 + (i * 7) % 40;
    clients.emplace_back([&, i] {
      auto stub = (i % 2 == 0 ? a : b).NewStub();
      const v1::KvMode mode = modes[i % 3];
      // Every fourth client shares a 48-token prefix with the others.
      std::vector<int32_t> prompt = RandomTokens(5 + (i * 13) % 90, 100 + i);
      if (i % 4 == 0) {
        std::vector<int32_t> shared = RandomTokens(48, 99);
        prompt.insert(prompt.begin(), shared.begin(), shared.end());
      }
      outcomes[i] = Generate(*stub, GreedyRequest(prompt, expected[i], mode));
    });
  }
  for (std::thread& t : clients) t.join();
  for (int i = 0; i < kClients; ++i) {
    ASSERT_TRUE(outcomes[i].status.ok()) << i << ": " << outcomes[i].status.error_message();
    ASSERT_EQ(outcomes[i].tokens.size(), 1u);
    EXPECT_EQ(static_cast<int>(outcomes[i].tokens[0].size()), expected[i]) << i;
    EXPECT_EQ(outcomes[i].summary.usage().completion_tokens(), expected[i]) << i;
  }
  auto stub = manager.NewStub();
  std::string violation;
  EXPECT_TRUE(ManagerInvariantsHold(*stub, &violation)) << violation;
  const v1::GetStatsResponse stats = ManagerStats(*stub);
  EXPECT_EQ(stats.in_use_blocks(), 0);
  EXPECT_EQ(stats.num_sequences(), 0);
}

// Eight requests of 20 + 140 tokens in a 24-block pool (each needs 10 blocks, 80 in
// all): the worker admits while it keeps 4 blocks of headroom per running sequence, so
// a few start together and outgrow the pool as they decode. Every request completes,
// and each preempted one produces the same greedy tokens as when it runs alone.
// Returns the preemptions.
int RunPreemptingLoad(WorkerProcess& worker) {
  constexpr int kClients = 8;
  std::vector<GenerateOutcome> outcomes(kClients);
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      auto stub = worker.NewStub();
      outcomes[i] =
          Generate(*stub, GreedyRequest(RandomTokens(20, 200 + i), 140, v1::KV_MODE_PAGED), "", {},
                   std::chrono::seconds(60));
    });
  }
  for (std::thread& t : clients) t.join();
  int preemptions = 0;
  auto stub = worker.NewStub();
  for (int i = 0; i < kClients; ++i) {
    EXPECT_TRUE(outcomes[i].status.ok()) << i << ": " << outcomes[i].status.error_message();
    if (!outcomes[i].status.ok()) continue;
    EXPECT_EQ(outcomes[i].tokens[0].size(), 140u) << i;
    if (outcomes[i].summary.preemptions() == 0) continue;
    preemptions += outcomes[i].summary.preemptions();
    // Resumed from what it generated (and its K/V, from swap space or recomputed).
    GenerateOutcome alone =
        Generate(*stub, GreedyRequest(RandomTokens(20, 200 + i), 140, v1::KV_MODE_PAGED));
    EXPECT_TRUE(alone.status.ok());
    EXPECT_EQ(alone.tokens[0], outcomes[i].tokens[0]) << i;
  }
  EXPECT_GT(preemptions, 0);
  return preemptions;
}

TEST(LoadTest, PoolTooSmallPreemptsAndEveryRequestStillCompletes) {
  ManagerProcess manager({"--model", "tiny-gpt2", "--num-blocks", "24"});
  ASSERT_FALSE(manager.address().empty());
  WorkerProcess worker(manager.address(), {"--model", "tiny-gpt2", "--threads", "1"});
  ASSERT_FALSE(worker.address().empty());
  const int preemptions = RunPreemptingLoad(worker);
  {
    // Swap space (the default): each preempted sequence's K/V came back from host
    // memory, and its prefill computed only its last token again.
    const v1::GetWorkerStatsResponse stats = WorkerStats(worker);
    EXPECT_EQ(stats.preemptions_total(), preemptions);
    EXPECT_EQ(stats.recomputed_tokens_total(), preemptions);
    // (Blocks it had committed may still be cached at the manager: those are hits.)
    EXPECT_GT(stats.swapped_tokens_total(), 0);
    EXPECT_EQ(stats.swap_space_used_bytes(), 0);  // every swapped sequence resumed
    EXPECT_GT(stats.scheduler_seconds_total().at("recompute"), 0);
    EXPECT_GT(stats.scheduler_seconds_total().at("prefill"), 0);
  }
  auto stub = worker.NewStub();
  // One request that can never fit: RESOURCE_EXHAUSTED at once, naming the sizes.
  GenerateOutcome huge =
      Generate(*stub, GreedyRequest(RandomTokens(100, 9), 300, v1::KV_MODE_PAGED));
  EXPECT_EQ(huge.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(huge.status.error_message().find("24"), std::string::npos)
      << huge.status.error_message();
  // Contiguous requests reserve prompt + max_tokens whole, and also all finish.
  std::vector<std::thread> more;
  std::atomic<int> ok{0};
  for (int i = 0; i < 6; ++i) {
    more.emplace_back([&, i] {
      auto s = worker.NewStub();
      GenerateOutcome out =
          Generate(*s, GreedyRequest(RandomTokens(30, 300 + i), 50, v1::KV_MODE_CONTIGUOUS));
      if (out.status.ok() && out.tokens[0].size() == 50u) ok.fetch_add(1);
    });
  }
  for (std::thread& t : more) t.join();
  EXPECT_EQ(ok.load(), 6);
  auto manager_stub = manager.NewStub();
  std::string violation;
  EXPECT_TRUE(ManagerInvariantsHold(*manager_stub, &violation)) << violation;
  EXPECT_EQ(ManagerStats(*manager_stub).in_use_blocks(), 0);
}

class TempFile {
 public:
  TempFile(const std::string& name, const std::string& text) : path_(::testing::TempDir() + name) {
    std::ofstream(path_) << text;
  }
  ~TempFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(LoadTest, WithoutSwapSpacePreemptedSequencesAreRecomputed) {
  ManagerProcess manager({"--model", "tiny-gpt2", "--num-blocks", "24"});
  ASSERT_FALSE(manager.address().empty());
  WorkerProcess worker(manager.address(),
                       {"--model", "tiny-gpt2", "--threads", "1", "--swap-space-gib", "0"});
  ASSERT_FALSE(worker.address().empty());
  const int preemptions = RunPreemptingLoad(worker);
  const v1::GetWorkerStatsResponse stats = WorkerStats(worker);
  EXPECT_EQ(stats.preemptions_total(), preemptions);
  EXPECT_EQ(stats.swapped_tokens_total(), 0);
  // Each resumed prompt (20 tokens + what it had generated) was computed again, all
  // but what the manager still had cached (whole blocks, so at most 15 tokens short).
  EXPECT_GT(stats.recomputed_tokens_total(), preemptions);
}

TEST(PrefixTest, OtherWorkerHitsThePrefixAndTenantsNeverShare) {
  TempFile tokens("kvpool_tokens.txt", "token-a tenant-a\ntoken-b tenant-b\ntoken-w workers\n");
  TempFile worker_token("kvpool_worker_token.txt", "token-w\n");
  ManagerProcess manager(
      {"--model", "gpt2", "--num-blocks", "256", "--auth-token-file", tokens.path()});
  ASSERT_FALSE(manager.address().empty());
  WorkerProcess a(manager.address(),
                  {"--model", "gpt2", "--threads", "2", "--token-file", worker_token.path()});
  WorkerProcess b(manager.address(),
                  {"--model", "gpt2", "--threads", "2", "--token-file", worker_token.path()});
  ASSERT_FALSE(a.address().empty());
  ASSERT_FALSE(b.address().empty());
  const std::vector<int32_t> system_prompt = RandomTokens(480, 11);
  auto with_suffix = [&](uint32_t seed) {
    std::vector<int32_t> p = system_prompt;
    for (int32_t t : RandomTokens(8, seed)) p.push_back(t);
    return p;
  };
  auto stub_a = a.NewStub();
  auto stub_b = b.NewStub();
  GenerateOutcome miss =
      Generate(*stub_a, GreedyRequest(with_suffix(1), 4, v1::KV_MODE_PAGED), "token-a");
  ASSERT_TRUE(miss.status.ok()) << miss.status.error_message();
  EXPECT_EQ(miss.summary.usage().cached_tokens(), 0);
  GenerateOutcome hit =
      Generate(*stub_b, GreedyRequest(with_suffix(2), 4, v1::KV_MODE_PAGED), "token-a");
  ASSERT_TRUE(hit.status.ok()) << hit.status.error_message();
  EXPECT_EQ(hit.summary.usage().cached_tokens(), 480);  // 30 full blocks of the prefix
  EXPECT_LT(hit.summary.ttft_s(), miss.summary.ttft_s());
  // Another tenant with the very same prompt computes it again.
  GenerateOutcome other =
      Generate(*stub_b, GreedyRequest(with_suffix(1), 4, v1::KV_MODE_PAGED), "token-b");
  ASSERT_TRUE(other.status.ok()) << other.status.error_message();
  EXPECT_EQ(other.summary.usage().cached_tokens(), 0);
  EXPECT_EQ(other.tokens, miss.tokens);  // same model, same prompt: same greedy tokens
  // A token the manager does not know is refused.
  GenerateOutcome stranger =
      Generate(*stub_a, GreedyRequest(with_suffix(3), 4, v1::KV_MODE_PAGED), "nope");
  EXPECT_EQ(stranger.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // No token at all is anonymous, never the worker's own tenant.
  GenerateOutcome anonymous =
      Generate(*stub_a, GreedyRequest(with_suffix(4), 4, v1::KV_MODE_PAGED));
  EXPECT_EQ(anonymous.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // Mode none holds no blocks, but its client is checked all the same.
  const std::vector<int32_t> short_prompt = RandomTokens(8, 5);
  GenerateOutcome none_stranger =
      Generate(*stub_a, GreedyRequest(short_prompt, 2, v1::KV_MODE_NONE), "nope");
  EXPECT_EQ(none_stranger.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(none_stranger.status.error_message().find("client"), std::string::npos)
      << none_stranger.status.error_message();
  GenerateOutcome none_anonymous =
      Generate(*stub_a, GreedyRequest(short_prompt, 2, v1::KV_MODE_NONE));
  EXPECT_EQ(none_anonymous.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  GenerateOutcome none_known =
      Generate(*stub_a, GreedyRequest(short_prompt, 2, v1::KV_MODE_NONE), "token-b");
  EXPECT_TRUE(none_known.status.ok()) << none_known.status.error_message();
}

TEST(LoadTest, CommitsOfManyLongPromptsSpreadOverSteps) {
  // The manager takes at most 512 tokens per call; 400-token prompts prefilled together
  // have more to commit, so the worker spreads them over several Steps.
  ManagerProcess manager(
      {"--model", "tiny-gpt2", "--num-blocks", "400", "--max-tokens-per-call", "512"});
  ASSERT_FALSE(manager.address().empty());
  WorkerProcess worker(manager.address(),
                       {"--model", "tiny-gpt2", "--threads", "1", "--max-prefill-tokens", "8192"});
  ASSERT_FALSE(worker.address().empty());
  constexpr int kClients = 12;
  std::vector<GenerateOutcome> outcomes(kClients);
  std::vector<std::thread> clients;
  // A slow request keeps the scheduler busy, so the others queue and are prefilled in
  // the same iterations.
  std::thread slow([&] {
    auto stub = worker.NewStub();
    GenerateOutcome out =
        Generate(*stub, GreedyRequest(RandomTokens(400, 499), 60, v1::KV_MODE_NONE));
    EXPECT_TRUE(out.status.ok()) << out.status.error_message();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      auto stub = worker.NewStub();
      outcomes[i] =
          Generate(*stub, GreedyRequest(RandomTokens(400, 500 + i), 8, v1::KV_MODE_PAGED));
    });
  }
  for (std::thread& t : clients) t.join();
  slow.join();
  for (int i = 0; i < kClients; ++i) {
    ASSERT_TRUE(outcomes[i].status.ok()) << i << ": " << outcomes[i].status.error_message();
    EXPECT_EQ(outcomes[i].tokens[0].size(), 8u);
  }
  // Every prompt's 25 full blocks were published: each is a prefix hit now.
  auto stub = worker.NewStub();
  for (int i = 0; i < kClients; ++i) {
    GenerateOutcome again =
        Generate(*stub, GreedyRequest(RandomTokens(400, 500 + i), 2, v1::KV_MODE_PAGED));
    ASSERT_TRUE(again.status.ok()) << again.status.error_message();
    EXPECT_EQ(again.summary.usage().cached_tokens(), 384) << i;  // capped: one token to compute
  }
}

}  // namespace
}  // namespace kvpool::integration
