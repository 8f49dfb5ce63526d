// Tenants and hostile input through the real services: tenants take turns at the
// worker's admission (one tenant's full queue never delays another's request past the
// first free slot), a worker's counters answer only authenticated callers, and invalid
// UTF-8 in a prompt or a stop string is INVALID_ARGUMENT naming the field through the
// SDK and the CLI.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <set>
#include <thread>

#include "kvpool/client.h"
#include "system_harness.h"

namespace kvpool::integration {
namespace {

using manager::testing::HttpGet;
using ::testing::HasSubstr;

// The token files of one test: named after it, since ctest runs this file's tests as
// parallel processes (a shared name let one test's quota reach another's manager).
class TokenFiles {
 public:
  explicit TokenFiles(const std::string& tenant_a = "tok-a tenant-a client\n") {
    std::ofstream(tokens_) << "tok-worker workers worker\n"
                           << tenant_a << "tok-b tenant-b client\n";
    std::ofstream(worker_) << "tok-worker\n";
  }
  ~TokenFiles() {
    std::remove(tokens_.c_str());
    std::remove(worker_.c_str());
  }
  const std::string& tokens() const { return tokens_; }
  const std::string& worker() const { return worker_; }

 private:
  static std::string Path(const char* what) {
    return ::testing::TempDir() + "kvpool_tenant_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name() + "_" + what;
  }
  const std::string tokens_ = Path("tokens.txt");
  const std::string worker_ = Path("worker_token.txt");
};

TEST(TenantTest, AnotherTenantIsAdmittedAtTheFirstFreeSlot) {
  TokenFiles files;
  ManagerProcess manager(
      {"--model", "gpt2", "--num-blocks", "256", "--auth-token-file", files.tokens()});
  ASSERT_FALSE(manager.address().empty());
  // One sequence at a time: every admission is a scheduling decision we can observe.
  WorkerProcess worker(manager.address(), {"--model", "gpt2", "--threads", "2", "--token-file",
                                           files.worker(), "--max-running", "1"});
  ASSERT_FALSE(worker.address().empty());
  std::atomic<int> first_tokens{0};
  std::vector<int> order(5, -1);  // A1..A4, B1: the rank of each one's first token
  std::atomic<bool> a1_started{false};
  auto run = [&](int index, const std::string& bearer, int max_tokens) {
    auto own_stub = worker.NewStub();
    bool seen = false;
    const GenerateOutcome out = Generate(
        *own_stub, GreedyRequest(RandomTokens(16, 70 + index), max_tokens, v1::KV_MODE_PAGED),
        bearer, [&](const v1::GeneratedToken&) {
          if (!seen) {
            seen = true;
            order[index] = first_tokens.fetch_add(1);
            if (index == 0) a1_started = true;
          }
          return true;
        });
    EXPECT_TRUE(out.status.ok()) << index << ": " << out.status.error_message();
  };
  std::vector<std::thread> clients;
  // A failed ASSERT returns early: the clients still end (their requests finish or fail)
  // and are joined, rather than std::terminate leaving the services running.
  struct JoinAll {
    std::vector<std::thread>& threads;
    ~JoinAll() {
      for (std::thread& t : threads) {
        if (t.joinable()) t.join();
      }
    }
  } join_all{clients};
  clients.emplace_back(run, 0, "tok-a", 120);  // long enough for the others to queue
  ASSERT_TRUE(WaitUntil([&] { return a1_started.load(); }, std::chrono::seconds(30)));
  for (int i = 1; i <= 3; ++i) clients.emplace_back(run, i, "tok-a", 4);
  ASSERT_TRUE(WaitUntil([&] { return WorkerStats(worker, "tok-a").requests_waiting() == 3; },
                        std::chrono::seconds(10)));
  clients.emplace_back(run, 4, "tok-b", 4);
  ASSERT_TRUE(WaitUntil([&] { return WorkerStats(worker, "tok-b").requests_waiting() == 4; },
                        std::chrono::seconds(10)));
  EXPECT_EQ(order[1], -1) << "A1 finished before the queue formed: the test proves nothing";
  for (std::thread& t : clients) t.join();
  // A1 ran first; when its slot freed, B's one request went before A's queue (whose
  // three requests arrived together, in no set order among themselves).
  EXPECT_EQ(order[0], 0);
  EXPECT_EQ(order[4], 1) << "B1 waited behind tenant A's queue";
  EXPECT_THAT((std::set<int>{order[1], order[2], order[3]}), ::testing::ElementsAre(2, 3, 4));
}

// A tenant at its block quota waits for its own sequences (queued at admission,
// preempted when a running one needs a block past the cap), never fails and never
// holds more than its cap, while another tenant is served as usual.
TEST(TenantTest, ATenantAtItsQuotaWaitsForItsOwnSequences) {
  TokenFiles files("tok-a tenant-a client max_blocks=6\n");
  ManagerProcess manager(
      {"--model", "tiny-gpt2", "--num-blocks", "256", "--auth-token-file", files.tokens()});
  ASSERT_FALSE(manager.address().empty());
  WorkerProcess worker(manager.address(),
                       {"--model", "tiny-gpt2", "--threads", "1", "--token-file", files.worker()});
  ASSERT_FALSE(worker.address().empty());
  // 20 prompt + 60 new tokens: 5 blocks of 16 at the end; two at once do not fit 6.
  constexpr int kRequests = 4;
  std::vector<v1::GenerateRequest> requests;
  std::vector<GenerateOutcome> alone(kRequests), together(kRequests);
  auto stub = worker.NewStub();
  for (int i = 0; i < kRequests; ++i) {
    requests.push_back(GreedyRequest(RandomTokens(20, 90 + i), 60, v1::KV_MODE_PAGED));
    alone[i] = Generate(*stub, requests[i], "tok-a");
    ASSERT_TRUE(alone[i].status.ok()) << alone[i].status.error_message();
  }
  auto manager_stub = manager.NewStub();
  std::atomic<bool> done{false};
  std::atomic<int64_t> most_held{0};
  std::thread watcher([&] {
    while (!done) {
      grpc::ClientContext context;
      context.AddMetadata("authorization", "Bearer tok-a");
      v1::GetStatsResponse stats;
      if (manager_stub->GetStats(&context, v1::GetStatsRequest(), &stats).ok()) {
        most_held = std::max<int64_t>(most_held, stats.tenant_blocks_in_use());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  std::vector<std::thread> clients;
  for (int i = 0; i < kRequests; ++i) {
    clients.emplace_back([&, i] {
      auto own = worker.NewStub();
      together[i] = Generate(*own, requests[i], "tok-a");
    });
  }
  // Tenant B is not held up by A's quota.
  GenerateOutcome other =
      Generate(*stub, GreedyRequest(RandomTokens(20, 99), 8, v1::KV_MODE_PAGED), "tok-b");
  EXPECT_TRUE(other.status.ok()) << other.status.error_message();
  for (std::thread& t : clients) t.join();
  done = true;
  watcher.join();
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(together[i].status.ok()) << i << ": " << together[i].status.error_message();
    EXPECT_EQ(together[i].tokens, alone[i].tokens) << i;
  }
  EXPECT_GT(most_held.load(), 0);
  EXPECT_LE(most_held.load(), 6);
  const std::string metrics = HttpGet(manager.http_address(), "/metrics");
  EXPECT_THAT(metrics, HasSubstr("kvpool_tenant_max_blocks{tenant=\"tenant-a\"} 6"));
  EXPECT_THAT(
      metrics,
      ::testing::Not(HasSubstr("kvpool_tenant_quota_rejections_total{tenant=\"tenant-a\"} 0")));
}

TEST(TenantTest, WorkerStatsAnswerOnlyAuthenticatedCallers) {
  TokenFiles files;
  ManagerProcess manager(
      {"--model", "tiny-gpt2", "--num-blocks", "64", "--auth-token-file", files.tokens()});
  ASSERT_FALSE(manager.address().empty());
  WorkerProcess worker(manager.address(),
                       {"--model", "tiny-gpt2", "--threads", "1", "--token-file", files.worker()});
  ASSERT_FALSE(worker.address().empty());
  grpc::Status status;
  WorkerStats(worker, "", &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << status.error_message();
  WorkerStats(worker, "nope", &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  const v1::GetWorkerStatsResponse stats = WorkerStats(worker, "tok-a", &status);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(stats.attached());
}

TEST(Utf8InputTest, InvalidUtf8IsInvalidArgumentThroughTheSdkAndTheCli) {
  ManagerProcess manager({"--model", "gpt2", "--num-blocks", "64"});
  ASSERT_FALSE(manager.address().empty());
  WorkerProcess worker(manager.address(), {"--model", "gpt2", "--threads", "1"});
  ASSERT_FALSE(worker.address().empty());
  ClientOptions options;
  options.addresses = {worker.address()};
  Client client(options);
  GenerateParams params;
  params.prompt = "caf\xC3";  // cut mid-character
  params.max_tokens = 2;
  StatusOr<GenerateResult> result = client.Generate(params);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), StatusCode::kInvalidArgument) << result.status().ToString();
  EXPECT_THAT(result.status().message(), HasSubstr("prompt is not valid UTF-8"));
  params.prompt = "fine";
  params.stop = {"ok", "\xFF\xFE"};
  result = client.Generate(params);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(result.status().message(), HasSubstr("stop[1] is not valid UTF-8"));

  Subprocess cli({KVPOOL_CLI_BIN, "generate", "--server", worker.address(), "--prompt",
                  "bad \xE6\xB7 prompt", "--max-tokens", "2"},
                 MergedStderr());
  std::string output;
  while (std::optional<std::string> line = cli.ReadLine(std::chrono::seconds(30))) {
    output += *line + "\n";
  }
  const std::optional<int> exit_status = cli.SignalAndWait(0, std::chrono::seconds(10));
  ASSERT_TRUE(exit_status.has_value());
  EXPECT_NE(WEXITSTATUS(*exit_status), 0);
  EXPECT_THAT(output, HasSubstr("INVALID_ARGUMENT"));
  EXPECT_THAT(output, HasSubstr("prompt is not valid UTF-8"));
}

}  // namespace
}  // namespace kvpool::integration
