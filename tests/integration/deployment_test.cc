// The deployment's own checks, on whichever pool the environment names: one manager
// hosting the pool and two workers attached to it. Here (and in CI) the pool is POSIX
// shared memory and the workers decode on the CPU; scripts/gpu-check.sh runs the same
// tests with the manager's pool on a GPU (KVPOOL_TEST_POOL_BACKEND=cuda), where the
// workers attach through CUDA IPC and decode on that GPU:
// - both workers attach to the manager's pool, on the device the backend implies;
// - the three KV modes give the same greedy tokens on either worker;
// - a prefix written by worker A is hit by worker B (cached tokens, same tokens);
// - a worker SIGKILLed mid-generation: its client fails, the other keeps serving, and
//   the manager takes its blocks back within two lease TTLs.
//
// Environment: KVPOOL_TEST_POOL_BACKEND (shm | cuda; default shm), KVPOOL_TEST_MODEL
// (default tiny-gpt2), KVPOOL_TEST_KV_DTYPE (default fp32: on a GPU the weights follow
// the pool's dtype, and fp32 keeps the modes' greedy tokens free of near ties).
#include <gtest/gtest.h>
#include <signal.h>

#include <cstdlib>
#include <string>

#include "system_harness.h"

namespace kvpool::integration {
namespace {

std::string Env(const char* name, const char* fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? value : fallback;
}

constexpr int kLeaseTtlMs = 1000;

class DeploymentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    backend_ = Env("KVPOOL_TEST_POOL_BACKEND", "shm");
    model_ = Env("KVPOOL_TEST_MODEL", "tiny-gpt2");
    manager_ = std::make_unique<ManagerProcess>(std::vector<std::string>{
        "--model", model_, "--num-blocks", "512", "--backend", backend_, "--kv-cache-dtype",
        Env("KVPOOL_TEST_KV_DTYPE", "fp32"), "--lease-ttl-ms", std::to_string(kLeaseTtlMs)});
    ASSERT_FALSE(manager_->address().empty());
    for (auto& worker : workers_) {
      worker = std::make_unique<WorkerProcess>(
          manager_->address(), std::vector<std::string>{"--model", model_, "--threads", "1"});
      ASSERT_FALSE(worker->address().empty());
    }
    manager_stub_ = manager_->NewStub();
  }

  std::string backend_, model_;
  std::unique_ptr<ManagerProcess> manager_;
  std::unique_ptr<WorkerProcess> workers_[2];
  std::unique_ptr<v1::CacheManager::Stub> manager_stub_;
};

TEST_F(DeploymentTest, BothWorkersDecodeOnThePoolsDevice) {
  const std::string want = backend_ == "cuda" ? "cuda:" : "cpu";
  for (auto& worker : workers_) {
    const v1::GetWorkerStatsResponse stats = WorkerStats(*worker);
    EXPECT_TRUE(stats.attached());
    auto stub = worker->NewStub();
    grpc::ClientContext context;
    v1::GetModelInfoResponse info;
    ASSERT_TRUE(stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok());
    EXPECT_EQ(info.device().rfind(want, 0), 0u) << "device " << info.device();
  }
  EXPECT_EQ(ManagerStats(*manager_stub_).num_workers(), 2);
}

TEST_F(DeploymentTest, ThreeModesGiveTheSameGreedyTokensOnEitherWorker) {
  const std::vector<int32_t> prompt = RandomTokens(45, 7);
  std::vector<int32_t> reference;
  for (v1::KvMode mode : {v1::KV_MODE_NONE, v1::KV_MODE_CONTIGUOUS, v1::KV_MODE_PAGED}) {
    for (int w = 0; w < 2; ++w) {
      auto stub = workers_[w]->NewStub();
      GenerateOutcome out = Generate(*stub, GreedyRequest(prompt, 32, mode));
      ASSERT_TRUE(out.status.ok()) << out.status.error_message();
      ASSERT_EQ(out.tokens.size(), 1u);
      ASSERT_EQ(out.tokens[0].size(), 32u);
      if (reference.empty()) reference = out.tokens[0];
      EXPECT_EQ(out.tokens[0], reference) << "mode " << mode << " on worker " << w;
    }
  }
  EXPECT_EQ(ManagerStats(*manager_stub_).in_use_blocks(), 0);
}

TEST_F(DeploymentTest, APrefixWrittenByOneWorkerIsHitByTheOther) {
  const std::vector<int32_t> prompt = RandomTokens(100, 8);  // six full 16-token blocks
  auto a = workers_[0]->NewStub();
  auto b = workers_[1]->NewStub();
  GenerateOutcome first = Generate(*a, GreedyRequest(prompt, 16, v1::KV_MODE_PAGED));
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  ASSERT_TRUE(first.has_summary);
  EXPECT_EQ(first.summary.usage().cached_tokens(), 0);
  GenerateOutcome second = Generate(*b, GreedyRequest(prompt, 16, v1::KV_MODE_PAGED));
  ASSERT_TRUE(second.status.ok()) << second.status.error_message();
  ASSERT_TRUE(second.has_summary);
  // Every full block of the prompt but one whose last token must be recomputed.
  EXPECT_GE(second.summary.usage().cached_tokens(), 80);
  EXPECT_EQ(second.tokens, first.tokens);
}

TEST_F(DeploymentTest, AKilledWorkersBlocksComeBackAndTheOtherKeepsServing) {
  auto doomed = workers_[0]->NewStub();
  int seen = 0;
  GenerateOutcome cut =
      Generate(*doomed, GreedyRequest(RandomTokens(60, 9), 400, v1::KV_MODE_PAGED), "",
               [&](const v1::GeneratedToken&) {
                 if (++seen == 3) {
                   EXPECT_GT(ManagerStats(*manager_stub_).in_use_blocks(), 0);
                   kill(workers_[0]->process().pid(), SIGKILL);
                 }
                 return true;
               });
  EXPECT_TRUE(cut.status.error_code() == grpc::StatusCode::UNAVAILABLE ||
              cut.status.error_code() == grpc::StatusCode::CANCELLED)
      << cut.status.error_code() << " " << cut.status.error_message();
  auto survivor = workers_[1]->NewStub();
  GenerateOutcome served =
      Generate(*survivor, GreedyRequest(RandomTokens(30, 10), 10, v1::KV_MODE_PAGED));
  EXPECT_TRUE(served.status.ok()) << served.status.error_message();
  EXPECT_TRUE(WaitUntil([&] { return ManagerStats(*manager_stub_).in_use_blocks() == 0; },
                        std::chrono::milliseconds(3 * kLeaseTtlMs)));
  const v1::GetStatsResponse stats = ManagerStats(*manager_stub_);
  EXPECT_EQ(stats.expired_leases(), 1);
  EXPECT_EQ(stats.num_workers(), 1);
  std::string violation;
  EXPECT_TRUE(ManagerInvariantsHold(*manager_stub_, &violation)) << violation;
}

}  // namespace
}  // namespace kvpool::integration
