// The kvpool CLI as a user runs it, against the real kvpool-manager: `stats` (table and
// JSON, a dead server among live ones), errors with the gRPC code name and a non-zero
// exit, `loadgen --json` keys, and `kvpool up --workers 0` (addresses, ready, SIGTERM
// stops the manager and exits 0; a manager that dies makes `up` exit non-zero).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "kvpool/client.h"
#include "tests/client/test_util.h"
#include "tests/manager/service/manager_process.h"

namespace kvpool {
namespace {

using ::kvpool::manager::testing::ManagerProcess;
using ::kvpool::manager::testing::Subprocess;
using ::kvpool::testing::CliRun;
using ::kvpool::testing::ClosedAddress;
using ::kvpool::testing::RunCli;
using ::testing::HasSubstr;

class CliTest : public ::testing::Test {
 protected:
  CliTest() : manager_({"--model", "gpt2", "--num-blocks", "48"}) {}
  ManagerProcess manager_;
};

TEST_F(CliTest, StatsPrintsAManagersTable) {
  const CliRun run = RunCli("stats --server " + manager_.address());
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, HasSubstr("manager " + manager_.address()));
  EXPECT_THAT(run.output, ::testing::ContainsRegex("num_blocks +48\n"));
  EXPECT_THAT(run.output, ::testing::ContainsRegex("free_blocks +48\n"));
}

TEST_F(CliTest, StatsJsonKeepsProtoFieldNames) {
  const CliRun run = RunCli("stats --json --server " + manager_.address(), false);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const nlohmann::json stats = nlohmann::json::parse(run.output);
  EXPECT_EQ(stats.at("num_blocks"), "48");  // int64 is a string in proto3 JSON
  EXPECT_EQ(stats.at("in_use_blocks"), "0");
  EXPECT_TRUE(stats.contains("kv_cache_usage_ratio"));
}

TEST_F(CliTest, StatsReportsADeadServerAndStillPrintsTheLiveOne) {
  const std::string dead = ClosedAddress();
  const CliRun run = RunCli("stats --server " + dead + "," + manager_.address());
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.output, HasSubstr("kvpool stats " + dead + ": UNAVAILABLE: "));
  EXPECT_THAT(run.output, HasSubstr("manager " + manager_.address()));
}

TEST(CliErrorTest, GenerateFailsWithTheCodeName) {
  const CliRun run = RunCli("generate --server " + ClosedAddress() + " --prompt hi --max-tokens 2");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.output, HasSubstr("kvpool generate: UNAVAILABLE: "));

  const CliRun bad_mode = RunCli("generate --server 127.0.0.1:1 --prompt hi --mode fast");
  EXPECT_NE(bad_mode.exit_code, 0);
  EXPECT_THAT(bad_mode.output, HasSubstr("--mode"));
}

TEST(CliErrorTest, LoadgenJsonCountsFailuresByCode) {
  const CliRun run = RunCli("loadgen --json --server " + ClosedAddress() +
                                " --requests 4 --concurrency 2 --prompt-tokens 8 --max-tokens 2",
                            false);
  EXPECT_EQ(run.exit_code, 1);
  const nlohmann::json report = nlohmann::json::parse(run.output);
  for (const char* key :
       {"wall_s", "requests", "failed", "completion_tokens", "tokens_per_s", "requests_per_s",
        "ttft_p50_s", "ttft_p99_s", "itl_p50_s", "itl_p99_s", "tpot_median_s", "cached_tokens"}) {
    EXPECT_TRUE(report.contains(key)) << key;
  }
  EXPECT_EQ(report.at("requests"), 4);
  EXPECT_EQ(report.at("failed"), 4);
  EXPECT_EQ(report.at("failures").at("UNAVAILABLE"), 4);
}

TEST(CliErrorTest, BenchPoolFlagsNeedTheLocalNode) {
  const CliRun with_server = RunCli("bench --server 127.0.0.1:1 --backend cuda --quiet");
  EXPECT_EQ(with_server.exit_code, 1);
  EXPECT_THAT(with_server.output,
              HasSubstr("--backend and --kv-cache-dtype set up the local node: run without "
                        "--server"));
  const CliRun vllm_on_gpu = RunCli("bench --backend cuda --baseline vllm --quiet");
  EXPECT_EQ(vllm_on_gpu.exit_code, 1);
  EXPECT_THAT(vllm_on_gpu.output, HasSubstr("--baseline vllm compares CPU engines"));
  const CliRun bad_backend = RunCli("bench --backend tpu --quiet");
  EXPECT_NE(bad_backend.exit_code, 0);
  EXPECT_THAT(bad_backend.output, HasSubstr("--backend"));
}

// `kvpool up --backend cuda` reaches the manager: on a machine without a GPU (or a
// build without CUDA) the manager refuses the pool and `kvpool up` exits 1 instead of
// serving a shared-memory pool.
TEST(CliErrorTest, UpPassesTheBackendToTheManager) {
  Subprocess up({KVPOOL_CLI_BIN, "up", "--workers", "0", "--num-blocks", "32", "--backend", "cuda",
                 "--cuda-device", "0"});
  // A shm pool would come up and print "manager ADDR"; the refused one prints nothing.
  EXPECT_EQ(up.ReadLine(std::chrono::seconds(30)), std::nullopt);
  const std::optional<int> status = up.SignalAndWait(SIGCONT, std::chrono::seconds(15));
  ASSERT_TRUE(status.has_value());
  ASSERT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 1);
}

// `kvpool up --workers 0`: the manager alone, so it runs without a worker binary.
class UpTest : public ::testing::Test {
 protected:
  UpTest() : up_({KVPOOL_CLI_BIN, "up", "--workers", "0", "--num-blocks", "32"}) {
    const std::optional<std::string> manager = up_.ReadLine(std::chrono::seconds(30));
    if (!manager || manager->rfind("manager ", 0) != 0) {
      ADD_FAILURE() << "kvpool up printed " << manager.value_or("nothing");
      return;
    }
    address_ = manager->substr(std::string("manager ").size());
    EXPECT_EQ(up_.ReadLine(std::chrono::seconds(30)).value_or(""), "ready");
  }

  // The pid of `kvpool up`'s only child, the manager.
  pid_t ManagerPid() const {
    std::ifstream children("/proc/" + std::to_string(up_.pid()) + "/task/" +
                           std::to_string(up_.pid()) + "/children");
    pid_t pid = -1;
    children >> pid;
    return pid;
  }

  Subprocess up_;
  std::string address_;
};

TEST_F(UpTest, ServesAManagerUntilSigterm) {
  ASSERT_FALSE(address_.empty());
  ClientOptions options;
  options.addresses = {address_};
  options.max_attempts = 1;
  const StatusOr<v1::GetStatsResponse> stats = Client(options).ManagerStats();
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->num_blocks(), 32);

  const std::optional<int> status = up_.SignalAndWait(SIGTERM, std::chrono::seconds(15));
  ASSERT_TRUE(status.has_value());
  ASSERT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 0);
  EXPECT_EQ(Client(options).ManagerStats().status().code(), StatusCode::kUnavailable);
}

TEST_F(UpTest, ExitsNonZeroWhenTheManagerDies) {
  ASSERT_FALSE(address_.empty());
  const pid_t manager = ManagerPid();
  ASSERT_GT(manager, 0);
  ASSERT_EQ(kill(manager, SIGKILL), 0);
  // kvpool up notices on its own; the SIGCONT only lets SignalAndWait poll for the exit.
  const std::optional<int> status = up_.SignalAndWait(SIGCONT, std::chrono::seconds(15));
  ASSERT_TRUE(status.has_value());
  ASSERT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 1);
}

}  // namespace
}  // namespace kvpool
