// `kvpool generate` and `kvpool loadgen` against an in-process FakeWorker: the flags
// reach the request, text goes to stdout and the timing summary to stderr, and loadgen
// sends seeded prompts with a shared prefix, greedy and ignore_eos, and counts tokens.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <mutex>
#include <nlohmann/json.hpp>
#include <set>

#include "tests/client/fake_worker.h"
#include "tests/client/test_util.h"

namespace kvpool {
namespace {

using ::kvpool::testing::CliRun;
using ::kvpool::testing::FakeWorker;
using ::kvpool::testing::RunCli;
using ::kvpool::testing::WriteSummary;
using ::kvpool::testing::WriteToken;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Answers every request with max_tokens tokens per sample ("t0 t1 ...") and keeps the
// requests it saw.
class RecordingWorker {
 public:
  RecordingWorker()
      : worker_([this](grpc::ServerContext*, const v1::GenerateRequest& request,
                       FakeWorker::Writer* writer) {
          {
            std::lock_guard<std::mutex> lock(mutex_);
            requests_.push_back(request);
          }
          const int samples = std::max(1, request.n());
          for (int i = 0; i < request.max_tokens(); ++i) {
            for (int s = 0; s < samples; ++s) WriteToken(writer, s, i, " t" + std::to_string(i));
          }
          WriteSummary(writer, int64_t{request.max_tokens()} * samples, 3);
          return grpc::Status::OK;
        }) {}

  const std::string& address() const { return worker_.address(); }
  std::vector<v1::GenerateRequest> requests() {
    std::lock_guard<std::mutex> lock(mutex_);
    return requests_;
  }

 private:
  std::mutex mutex_;
  std::vector<v1::GenerateRequest> requests_;
  FakeWorker worker_;  // last: stopped before the rest is destroyed
};

TEST(CliGenerateTest, StreamsTextToStdoutAndTimingsToStderr) {
  RecordingWorker worker;
  const std::string args = "generate --server " + worker.address() + " --prompt hi --max-tokens 3";
  const CliRun text = RunCli(args, false);
  EXPECT_EQ(text.exit_code, 0);
  EXPECT_EQ(text.output, " t0 t1 t2\n");
  const CliRun all = RunCli(args);
  EXPECT_THAT(all.output, HasSubstr("server        " + worker.address() + "\n"));
  EXPECT_THAT(all.output, HasSubstr("tokens        prompt 0, cached 3, completion 3\n"));
  EXPECT_THAT(all.output, HasSubstr("finish        length\n"));
  EXPECT_THAT(all.output, HasSubstr("inter-token p50"));
}

TEST(CliGenerateTest, PassesEveryFlagAndPrintsSamplesByIndex) {
  RecordingWorker worker;
  const CliRun run =
      RunCli("generate --server " + worker.address() +
                 " --token-ids 5,6,7 --mode contiguous --max-tokens 2 --temperature 0.7 --top-p 0.9"
                 " --top-k 40 --seed 11 --n 2 --stop END --stop '\\n' --ignore-eos",
             false);
  EXPECT_EQ(run.exit_code, 0);
  EXPECT_EQ(run.output, "[0]  t0 t1\n[1]  t0 t1\n");
  ASSERT_EQ(worker.requests().size(), 1u);
  const v1::GenerateRequest request = worker.requests()[0];
  EXPECT_THAT(request.token_ids(), ElementsAre(5, 6, 7));
  EXPECT_EQ(request.mode(), v1::KV_MODE_CONTIGUOUS);
  EXPECT_EQ(request.max_tokens(), 2);
  EXPECT_FLOAT_EQ(request.sampling().temperature(), 0.7f);
  EXPECT_FLOAT_EQ(request.sampling().top_p(), 0.9f);
  EXPECT_EQ(request.sampling().top_k(), 40);
  EXPECT_EQ(request.sampling().seed(), 11u);
  EXPECT_EQ(request.n(), 2);
  EXPECT_THAT(request.stop(), ElementsAre("END", "\\n"));
  EXPECT_TRUE(request.ignore_eos());
}

TEST(CliGenerateTest, ClientSideErrorsNameTheField) {
  const CliRun run = RunCli("generate --server 127.0.0.1:1 --max-tokens 2");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.output, HasSubstr("kvpool generate: INVALID_ARGUMENT: exactly one of prompt"));
}

TEST(CliLoadgenTest, SeededPromptsWithASharedPrefix) {
  RecordingWorker worker;
  const std::string args = "loadgen --json --server " + worker.address() +
                           " --requests 6 --concurrency 3 --prompt-tokens 10 --max-tokens 4"
                           " --shared-prefix-tokens 5 --seed 7 --vocab 1000 --mode paged";
  const CliRun run = RunCli(args, false);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const nlohmann::json report = nlohmann::json::parse(run.output);
  EXPECT_EQ(report.at("requests"), 6);
  EXPECT_EQ(report.at("failed"), 0);
  EXPECT_EQ(report.at("completion_tokens"), 24);
  EXPECT_EQ(report.at("cached_tokens"), 18);
  EXPECT_GT(report.at("tokens_per_s").get<double>(), 0.0);

  const std::vector<v1::GenerateRequest> requests = worker.requests();
  ASSERT_EQ(requests.size(), 6u);
  std::set<std::vector<int32_t>> prompts;
  for (const v1::GenerateRequest& request : requests) {
    ASSERT_EQ(request.token_ids_size(), 10);
    EXPECT_TRUE(std::equal(request.token_ids().begin(), request.token_ids().begin() + 5,
                           requests[0].token_ids().begin()));
    for (int32_t id : request.token_ids()) EXPECT_LT(id, 1000);
    EXPECT_EQ(request.sampling().temperature(), 0.0f);
    EXPECT_TRUE(request.ignore_eos());
    EXPECT_EQ(request.mode(), v1::KV_MODE_PAGED);
    prompts.emplace(request.token_ids().begin(), request.token_ids().end());
  }
  EXPECT_EQ(prompts.size(), 6u);

  // The same seed sends the same prompts.
  RecordingWorker again;
  ASSERT_EQ(RunCli("loadgen --json --server " + again.address() +
                       " --requests 6 --concurrency 3 --prompt-tokens 10 --max-tokens 4"
                       " --shared-prefix-tokens 5 --seed 7 --vocab 1000",
                   false)
                .exit_code,
            0);
  std::set<std::vector<int32_t>> prompts_again;
  for (const v1::GenerateRequest& request : again.requests()) {
    prompts_again.emplace(request.token_ids().begin(), request.token_ids().end());
  }
  EXPECT_EQ(prompts_again, prompts);
}

}  // namespace
}  // namespace kvpool
