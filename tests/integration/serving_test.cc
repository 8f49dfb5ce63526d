// One manager and two workers (tiny-gpt2: two layers, GPT-2's vocabulary, fast on
// two cores): the same greedy tokens whichever worker and mode serves, parallel
// sampling through Fork, cancellation, bad input, and the stream's usage numbers.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <thread>

#include "system_harness.h"

namespace kvpool::integration {
namespace {

class ServingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    manager_ = new ManagerProcess({"--model", "tiny-gpt2", "--num-blocks", "256"});
    for (int i = 0; i < 2; ++i) {
      workers_[i] =
          new WorkerProcess(manager_->address(), {"--model", "tiny-gpt2", "--threads", "1"});
    }
  }
  static void TearDownTestSuite() {
    for (WorkerProcess*& w : workers_) {
      delete w;
      w = nullptr;
    }
    delete manager_;
    manager_ = nullptr;
  }
  void SetUp() override {
    ASSERT_FALSE(manager_->address().empty());
    for (WorkerProcess* w : workers_) ASSERT_FALSE(w->address().empty());
  }
  std::unique_ptr<v1::Worker::Stub> Worker(int i) { return workers_[i]->NewStub(); }
  v1::GetStatsResponse Stats() {
    auto stub = manager_->NewStub();
    return ManagerStats(*stub);
  }

  static ManagerProcess* manager_;
  static WorkerProcess* workers_[2];
};
ManagerProcess* ServingTest::manager_ = nullptr;
WorkerProcess* ServingTest::workers_[2] = {nullptr, nullptr};

TEST_F(ServingTest, SameGreedyTokensOnEitherWorkerInEveryMode) {
  const std::vector<int32_t> prompt = RandomTokens(37, 1);
  std::vector<int32_t> reference;
  for (v1::KvMode mode : {v1::KV_MODE_NONE, v1::KV_MODE_CONTIGUOUS, v1::KV_MODE_PAGED}) {
    for (int w = 0; w < 2; ++w) {
      auto stub = Worker(w);
      GenerateOutcome out = Generate(*stub, GreedyRequest(prompt, 24, mode));
      ASSERT_TRUE(out.status.ok()) << out.status.error_message();
      ASSERT_EQ(out.tokens.size(), 1u);
      ASSERT_EQ(out.tokens[0].size(), 24u);
      if (reference.empty()) reference = out.tokens[0];
      EXPECT_EQ(out.tokens[0], reference) << "mode " << mode << " on worker " << w;
      ASSERT_TRUE(out.has_summary);
      EXPECT_EQ(out.summary.finish_reasons(0), "length");
    }
  }
  EXPECT_EQ(Stats().in_use_blocks(), 0);
}

TEST_F(ServingTest, SummaryReportsUsageTimingsAndKvBytesPerMode) {
  const std::vector<int32_t> prompt = RandomTokens(40, 2);
  auto stub = Worker(0);
  GenerateOutcome paged = Generate(*stub, GreedyRequest(prompt, 20, v1::KV_MODE_PAGED));
  ASSERT_TRUE(paged.status.ok()) << paged.status.error_message();
  const v1::GenerateSummary& s = paged.summary;
  EXPECT_EQ(s.usage().prompt_tokens(), 40);
  EXPECT_EQ(s.usage().completion_tokens(), 20);
  EXPECT_GT(s.ttft_s(), 0);
  EXPECT_GT(s.time_per_output_token_s(), 0);
  EXPECT_GE(s.total_s(), s.ttft_s());
  // tiny-gpt2 K/V: 2 layers x 4 heads x 16 dims x K,V x fp32 = 1 KiB per token.
  constexpr int64_t kTokenBytes = 2 * 4 * 16 * 2 * 4;
  EXPECT_EQ(s.kv_bytes_reserved(), 4 * 16 * kTokenBytes);  // 59 tokens -> 4 blocks of 16
  EXPECT_EQ(s.kv_bytes_used(), 59 * kTokenBytes);
  GenerateOutcome contiguous = Generate(*stub, GreedyRequest(prompt, 20, v1::KV_MODE_CONTIGUOUS));
  ASSERT_TRUE(contiguous.status.ok());
  EXPECT_EQ(contiguous.summary.kv_bytes_reserved(), 4 * 16 * kTokenBytes);  // 60 reserved
  GenerateOutcome none = Generate(*stub, GreedyRequest(prompt, 20, v1::KV_MODE_NONE));
  ASSERT_TRUE(none.status.ok());
  EXPECT_EQ(none.summary.kv_bytes_reserved(), 0);
}

TEST_F(ServingTest, TextPromptStreamsValidText) {
  auto stub = Worker(1);
  v1::GenerateRequest request;
  request.set_prompt("深度学习中的注意力机制是一种");
  request.set_max_tokens(16);
  request.set_ignore_eos(true);
  GenerateOutcome out = Generate(*stub, request);
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_EQ(out.tokens[0].size(), 16u);
  EXPECT_GT(out.summary.usage().prompt_tokens(), 5);
  EXPECT_FALSE(out.text[0].empty());  // protobuf has checked it is UTF-8
}

TEST_F(ServingTest, ParallelSamplesForkThePromptAndFollowTheSeed) {
  v1::GenerateRequest request = GreedyRequest(RandomTokens(35, 3), 12, v1::KV_MODE_PAGED);
  request.set_n(3);
  request.mutable_sampling()->set_temperature(1.0);
  request.mutable_sampling()->set_seed(7);
  auto stub = Worker(0);
  GenerateOutcome first = Generate(*stub, request);
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  ASSERT_EQ(first.tokens.size(), 3u);
  for (const auto& sample : first.tokens) EXPECT_EQ(sample.size(), 12u);
  EXPECT_EQ(first.summary.usage().completion_tokens(), 36);
  EXPECT_NE(first.tokens[0], first.tokens[1]);
  EXPECT_NE(first.tokens[1], first.tokens[2]);
  GenerateOutcome again = Generate(*stub, request);
  ASSERT_TRUE(again.status.ok());
  EXPECT_EQ(again.tokens, first.tokens);
  // The other modes run n independent sequences with the same seeds per sample.
  request.set_mode(v1::KV_MODE_CONTIGUOUS);
  GenerateOutcome contiguous = Generate(*stub, request);
  ASSERT_TRUE(contiguous.status.ok());
  EXPECT_EQ(contiguous.tokens, first.tokens);
  EXPECT_EQ(Stats().in_use_blocks(), 0);
}

TEST_F(ServingTest, CancelledRequestFreesItsBlocksAtOnce) {
  auto stub = Worker(0);
  int seen = 0;
  GenerateOutcome out = Generate(*stub, GreedyRequest(RandomTokens(64, 4), 400, v1::KV_MODE_PAGED),
                                 "", [&](const v1::GeneratedToken&) { return ++seen < 5; });
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(WaitUntil([&] { return Stats().in_use_blocks() == 0; }, std::chrono::seconds(2)));
  // A deadline does the same.
  v1::GenerateRequest slow = GreedyRequest(RandomTokens(60, 5), 450, v1::KV_MODE_CONTIGUOUS);
  slow.set_n(4);  // ~1 ms per token and sample here: well past the deadline
  GenerateOutcome late = Generate(*stub, slow, "", {}, std::chrono::milliseconds(300));
  EXPECT_EQ(late.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(WaitUntil([&] { return Stats().in_use_blocks() == 0; }, std::chrono::seconds(2)));
}

TEST_F(ServingTest, BadInputIsInvalidArgumentNamingTheField) {
  auto stub = Worker(1);
  const std::vector<int32_t> ok_prompt = RandomTokens(8, 6);
  struct Case {
    std::string name;
    std::function<void(v1::GenerateRequest&)> change;
    std::string expect;  // in the message
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<Case> cases = {
      {"empty prompt", [](v1::GenerateRequest& r) { r.clear_token_ids(); }, "empty"},
      {"token id >= vocab", [](v1::GenerateRequest& r) { r.set_token_ids(3, 50257); },
       "token_ids[3]"},
      {"negative token id", [](v1::GenerateRequest& r) { r.set_token_ids(0, -1); }, "token_ids[0]"},
      {"max_tokens 0", [](v1::GenerateRequest& r) { r.set_max_tokens(0); }, "max_tokens"},
      {"max_tokens < 0", [](v1::GenerateRequest& r) { r.set_max_tokens(-5); }, "max_tokens"},
      {"beyond the context", [](v1::GenerateRequest& r) { r.set_max_tokens(600); }, "max_tokens"},
      {"temperature < 0",
       [](v1::GenerateRequest& r) { r.mutable_sampling()->set_temperature(-0.1f); }, "temperature"},
      {"temperature NaN",
       [nan](v1::GenerateRequest& r) { r.mutable_sampling()->set_temperature(nan); },
       "temperature"},
      {"top_p 0", [](v1::GenerateRequest& r) { r.mutable_sampling()->set_top_p(0); }, "top_p"},
      {"top_p > 1", [](v1::GenerateRequest& r) { r.mutable_sampling()->set_top_p(1.5f); }, "top_p"},
      {"top_k < 0", [](v1::GenerateRequest& r) { r.mutable_sampling()->set_top_k(-1); }, "top_k"},
      {"unknown mode", [](v1::GenerateRequest& r) { r.set_mode(static_cast<v1::KvMode>(9)); },
       "mode"},
      {"oversized prompt",
       [](v1::GenerateRequest& r) {
         r.clear_token_ids();
         for (int32_t t : RandomTokens(600, 7)) r.add_token_ids(t);
       },
       "prompt has 600 tokens"},
      {"n < 0", [](v1::GenerateRequest& r) { r.set_n(-2); }, "n must be"},
      {"prompt and ids", [](v1::GenerateRequest& r) { r.set_prompt("hello"); }, "not both"},
  };
  for (const Case& c : cases) {
    v1::GenerateRequest request = GreedyRequest(ok_prompt, 4, v1::KV_MODE_PAGED);
    c.change(request);
    GenerateOutcome out = Generate(*stub, request);
    EXPECT_EQ(out.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name;
    EXPECT_NE(out.status.error_message().find(c.expect), std::string::npos)
        << c.name << ": " << out.status.error_message();
    EXPECT_TRUE(out.tokens.empty()) << c.name;
  }
  GenerateOutcome fine = Generate(*stub, GreedyRequest(ok_prompt, 4, v1::KV_MODE_PAGED));
  EXPECT_TRUE(fine.status.ok()) << fine.status.error_message();
}

TEST_F(ServingTest, ModelInfoAndStatsDescribeTheWorker) {
  auto stub = Worker(0);
  grpc::ClientContext info_context;
  v1::GetModelInfoResponse info;
  ASSERT_TRUE(stub->GetModelInfo(&info_context, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.model_name(), "tiny-gpt2");
  EXPECT_EQ(info.num_layers(), 2);
  EXPECT_EQ(info.vocab_size(), 50257);
  EXPECT_EQ(info.block_size(), 16);
  EXPECT_EQ(info.num_blocks(), 256);
  EXPECT_EQ(info.kv_dtype(), "fp32");
  GenerateOutcome out = Generate(*stub, GreedyRequest(RandomTokens(20, 8), 40, v1::KV_MODE_PAGED));
  ASSERT_TRUE(out.status.ok());
  grpc::ClientContext stats_context;
  v1::GetWorkerStatsResponse stats;
  ASSERT_TRUE(stub->GetStats(&stats_context, v1::GetWorkerStatsRequest(), &stats).ok());
  EXPECT_TRUE(stats.attached());
  EXPECT_GT(stats.worker_id(), 0);
  EXPECT_GE(stats.generated_tokens_total(), 40);
  EXPECT_GT(stats.manager_calls_total(), 0);
  // The counters follow the scheduler's step that ended the request.
  EXPECT_TRUE(WaitUntil(
      [&] {
        grpc::ClientContext context;
        v1::GetWorkerStatsResponse now;
        return stub->GetStats(&context, v1::GetWorkerStatsRequest(), &now).ok() &&
               now.kv_blocks_held() == 0 && now.requests_running() == 0;
      },
      std::chrono::seconds(2)));
}

}  // namespace
}  // namespace kvpool::integration
