// A manager whose pool holds int8 K/V (one fp32 scale per token and KV head) and four
// workers that follow it (--kv-cache-dtype auto or int8; fp32, bf16 or fp16 weights):
// every mode is served, the workers describe the pool's dtype, a prefix one worker
// wrote is read by another, and a worker that insists on another KV dtype stops,
// naming both.
#include <gtest/gtest.h>

#include <csignal>

#include "kvpool/client.h"
#include "system_harness.h"

namespace kvpool::integration {
namespace {

class KvDtypeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    manager_ = std::make_unique<ManagerProcess>(std::vector<std::string>{
        "--model", "tiny-gpt2", "--num-blocks", "256", "--kv-cache-dtype", "int8"});
    const std::vector<std::string> base = {"--model", "tiny-gpt2", "--threads", "1"};
    for (const std::vector<std::string>& extra :
         std::vector<std::vector<std::string>>{{},
                                               {"--kv-cache-dtype", "int8"},
                                               {"--weight-dtype", "bf16"},
                                               {"--weight-dtype", "fp16"}}) {
      std::vector<std::string> args = base;
      args.insert(args.end(), extra.begin(), extra.end());
      workers_.push_back(std::make_unique<WorkerProcess>(manager_->address(), args));
    }
  }
  static void TearDownTestSuite() {
    workers_.clear();
    manager_.reset();
  }
  void SetUp() override {
    ASSERT_FALSE(manager_->address().empty());
    for (const auto& w : workers_) ASSERT_FALSE(w->address().empty());
  }

  static std::unique_ptr<ManagerProcess> manager_;
  static std::vector<std::unique_ptr<WorkerProcess>> workers_;
};
std::unique_ptr<ManagerProcess> KvDtypeTest::manager_;
std::vector<std::unique_ptr<WorkerProcess>> KvDtypeTest::workers_;

TEST_F(KvDtypeTest, WorkersDescribeTheInt8Pool) {
  for (const auto& w : workers_) {
    auto stub = w->NewStub();
    grpc::ClientContext context;
    v1::GetModelInfoResponse info;
    ASSERT_TRUE(stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok());
    EXPECT_EQ(info.kv_dtype(), "int8");
  }
}

TEST_F(KvDtypeTest, EveryModeServesAndAPrefixWrittenByOneWorkerIsReadByAnother) {
  const std::vector<int32_t> prompt = RandomTokens(41, 3);
  for (size_t w : {size_t{2}, size_t{3}}) {  // bf16 and fp16 weights
    for (v1::KvMode mode : {v1::KV_MODE_NONE, v1::KV_MODE_CONTIGUOUS, v1::KV_MODE_PAGED}) {
      auto stub = workers_[w]->NewStub();
      GenerateOutcome out = Generate(*stub, GreedyRequest(RandomTokens(19, 5), 12, mode));
      ASSERT_TRUE(out.status.ok()) << out.status.error_message();
      ASSERT_EQ(out.tokens.at(0).size(), 12u) << "worker " << w << " mode " << mode;
    }
  }
  auto first = workers_[0]->NewStub();
  GenerateOutcome a = Generate(*first, GreedyRequest(prompt, 16, v1::KV_MODE_PAGED));
  ASSERT_TRUE(a.status.ok()) << a.status.error_message();
  auto second = workers_[1]->NewStub();
  GenerateOutcome b = Generate(*second, GreedyRequest(prompt, 16, v1::KV_MODE_PAGED));
  ASSERT_TRUE(b.status.ok()) << b.status.error_message();
  ASSERT_TRUE(b.has_summary);
  // tiny-gpt2's blocks are 16 tokens: the prompt's two full blocks come from the pool,
  // quantized by the first worker, and give the same tokens (same weights).
  EXPECT_EQ(b.summary.usage().cached_tokens(), 32);
  EXPECT_EQ(b.tokens.at(0), a.tokens.at(0));
}

TEST_F(KvDtypeTest, AWorkerThatInsistsOnAnotherKvDtypeStopsNamingBoth) {
  Subprocess worker({KVPOOL_WORKER_BIN, "--manager", manager_->address(), "--listen", "127.0.0.1:0",
                     "--model", "tiny-gpt2", "--kv-cache-dtype", "bf16"},
                    MergedStderr());
  std::string said;
  bool eof = false;
  while (!eof) {
    std::optional<std::string> line = worker.ReadLine(std::chrono::seconds(60), &eof);
    if (!line) break;
    said += *line + "\n";
  }
  EXPECT_NE(said.find("--kv-cache-dtype bf16 but the manager's pool holds int8"), std::string::npos)
      << said;
  const std::optional<int> status = worker.SignalAndWait(SIGTERM, std::chrono::seconds(10));
  ASSERT_TRUE(status.has_value());
  EXPECT_NE(*status, 0);
}

TEST(KvDtypeUpTest, KvpoolUpPassesTheKvAndWeightDtypes) {
  Subprocess up({KVPOOL_CLI_BIN, "up", "--workers", "1", "--model", "tiny-gpt2", "--threads", "1",
                 "--num-blocks", "64", "--kv-cache-dtype", "fp8", "--weight-dtype", "bf16"});
  std::vector<std::string> workers;
  bool ready = false;
  while (std::optional<std::string> line = up.ReadLine(std::chrono::seconds(120))) {
    if (line->rfind("worker ", 0) == 0) workers.push_back(line->substr(7));
    if (*line == "ready") {
      ready = true;
      break;
    }
  }
  ASSERT_TRUE(ready);
  ClientOptions options;
  options.addresses = workers;
  options.deadline = std::chrono::seconds(60);
  Client client(options);
  StatusOr<v1::GetModelInfoResponse> info = client.ModelInfo();
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(info->kv_dtype(), "fp8");
  // bf16 linear layers: fewer bytes than the fp32 parameters, more than half of them
  // (embeddings and norms stay fp32).
  EXPECT_LT(info->weight_bytes(), 4 * info->num_parameters());
  EXPECT_GT(info->weight_bytes(), 2 * info->num_parameters());
  GenerateParams params;
  params.token_ids = RandomTokens(20, 9);
  params.max_tokens = 6;
  params.mode = "paged";
  params.ignore_eos = true;
  StatusOr<GenerateResult> result = client.Generate(params);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->tokens.at(0).size(), 6u);
  const std::optional<int> status = up.SignalAndWait(SIGTERM, std::chrono::seconds(20));
  ASSERT_TRUE(status.has_value());
}

}  // namespace
}  // namespace kvpool::integration
