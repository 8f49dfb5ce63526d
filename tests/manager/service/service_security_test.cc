// The manager under attack: calls naming a stale or missing manager instance, client
// tokens acting as workers, worker tokens passed off as clients, oversized and
// non-UTF-8 names, a lease TTL no worker can keep, a tenant past its block quota, and
// stats read without (or with another tenant's) credentials. Each gets its documented
// code, a message naming the field or the limit, and a structured reason where a
// caller must branch on it.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <fstream>

#include "common/grpc_status.h"
#include "common/metadata.h"
#include "tests/manager/service/manager_process.h"

namespace kvpool::manager::testing {
namespace {

using ::testing::HasSubstr;

// A token file with roles and a quota; removed when the test ends.
class TokenFile {
 public:
  explicit TokenFile(const std::string& text)
      : path_(::testing::TempDir() + "kvpool_security_tokens_" + std::to_string(getpid())) {
    std::ofstream(path_) << text;
  }
  ~TokenFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

constexpr char kTokens[] =
    "# TOKEN TENANT ROLES [max_blocks=]\n"
    "tok-worker workers worker\n"
    "tok-alice alice client max_blocks=4\n"
    "tok-bob bob client\n"
    "tok-legacy legacy\n";

class ServiceSecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    manager_ = std::make_unique<ManagerProcess>(std::vector<std::string>{
        "--model", "tiny-gpt2", "--num-blocks", "64", "--auth-token-file", tokens_.path()});
    ASSERT_FALSE(manager_->address().empty());
    stub_ = manager_->NewStub();
    v1::RegisterWorkerResponse worker;
    ASSERT_TRUE(stub_->RegisterWorker(Ctx("tok-worker").get(), {}, &worker).ok());
    worker_id_ = worker.worker_id();
    instance_ = worker.manager_instance();
  }
  // A context of the worker, forwarding `client` as its end client's token.
  static std::unique_ptr<grpc::ClientContext> ForClient(const std::string& client) {
    auto context = Ctx("tok-worker");
    context->AddMetadata(v1::kClientAuthorizationHeader, "Bearer " + client);
    return context;
  }
  v1::OpenSequenceRequest Open(int prompt_tokens, int max_tokens) const {
    v1::OpenSequenceRequest open;
    open.set_worker_id(worker_id_);
    open.set_manager_instance(instance_);
    for (int i = 0; i < prompt_tokens; ++i) open.add_token_ids(i);
    open.set_max_tokens(max_tokens);
    open.set_mode(v1::SEQUENCE_MODE_PAGED);
    return open;
  }

  TokenFile tokens_{kTokens};
  std::unique_ptr<ManagerProcess> manager_;
  std::unique_ptr<v1::CacheManager::Stub> stub_;
  int64_t worker_id_ = 0;
  std::string instance_;
};

TEST_F(ServiceSecurityTest, InstanceIsRandomAndIdsAreNotSmallCounters) {
  EXPECT_EQ(instance_.size(), 32u);
  EXPECT_GT(worker_id_, 1 << 20);  // a random base, not 1, 2, 3 ...
  v1::RegisterWorkerResponse next;
  ASSERT_TRUE(stub_->RegisterWorker(Ctx("tok-worker").get(), {}, &next).ok());
  EXPECT_EQ(next.manager_instance(), instance_);
  EXPECT_NE(next.worker_id(), worker_id_);
}

TEST_F(ServiceSecurityTest, StaleInstanceIsManagerRestartedByReason) {
  v1::HeartbeatRequest beat;
  beat.set_worker_id(worker_id_);
  beat.set_manager_instance(instance_);
  v1::HeartbeatResponse beaten;
  EXPECT_TRUE(stub_->Heartbeat(Ctx("tok-worker").get(), beat, &beaten).ok());
  beat.set_manager_instance("0123456789abcdef0123456789abcdef");
  grpc::Status status = stub_->Heartbeat(Ctx("tok-worker").get(), beat, &beaten);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(v1::ReasonOf(status), reason::kManagerRestarted);
  EXPECT_THAT(status.error_message(), HasSubstr("manager restarted"));
  // Every worker call checks it, Step included.
  v1::StepRequest step;
  step.set_worker_id(worker_id_);
  step.set_manager_instance("stale");
  v1::StepResponse stepped;
  status = stub_->Step(Ctx("tok-worker").get(), step, &stepped);
  EXPECT_EQ(v1::ReasonOf(status), reason::kManagerRestarted);
  beat.clear_manager_instance();
  status = stub_->Heartbeat(Ctx("tok-worker").get(), beat, &beaten);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("manager_instance"));
  // An unknown worker of this instance: NOT_FOUND with its own reason.
  beat.set_manager_instance(instance_);
  beat.set_worker_id(worker_id_ + 12345);
  status = stub_->Heartbeat(Ctx("tok-worker").get(), beat, &beaten);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(v1::ReasonOf(status), reason::kWorkerNotRegistered);
}

TEST_F(ServiceSecurityTest, ClientTokensGetPermissionDeniedOnEveryWorkerCall) {
  const std::string client = "tok-alice";
  auto denied = [](const grpc::Status& status) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr("worker role"));
  };
  v1::RegisterWorkerResponse registered;
  denied(stub_->RegisterWorker(Ctx(client).get(), {}, &registered));
  v1::HeartbeatRequest beat;
  beat.set_worker_id(worker_id_);
  beat.set_manager_instance(instance_);
  v1::HeartbeatResponse beaten;
  denied(stub_->Heartbeat(Ctx(client).get(), beat, &beaten));
  v1::OpenSequenceResponse opened;
  denied(stub_->OpenSequence(Ctx(client).get(), Open(4, 4), &opened));
  v1::StepRequest step;
  step.set_worker_id(worker_id_);
  step.set_manager_instance(instance_);
  v1::StepResponse stepped;
  denied(stub_->Step(Ctx(client).get(), step, &stepped));
  v1::ForkRequest fork;
  fork.set_worker_id(worker_id_);
  fork.set_manager_instance(instance_);
  v1::ForkResponse forked;
  denied(stub_->Fork(Ctx(client).get(), fork, &forked));
  v1::CloseSequenceRequest close;
  close.set_worker_id(worker_id_);
  close.set_manager_instance(instance_);
  v1::CloseSequenceResponse closed;
  denied(stub_->CloseSequence(Ctx(client).get(), close, &closed));
  v1::AuthenticateClientRequest check;
  check.set_worker_id(worker_id_);
  check.set_manager_instance(instance_);
  v1::AuthenticateClientResponse checked;
  denied(stub_->AuthenticateClient(Ctx(client).get(), check, &checked));
  // A token of the first format ("TOKEN TENANT") keeps both roles.
  EXPECT_TRUE(stub_->RegisterWorker(Ctx("tok-legacy").get(), {}, &registered).ok());
}

TEST_F(ServiceSecurityTest, AWorkerTokenIsNoClientCredential) {
  v1::AuthenticateClientRequest check;
  check.set_worker_id(worker_id_);
  check.set_manager_instance(instance_);
  v1::AuthenticateClientResponse checked;
  ASSERT_TRUE(stub_->AuthenticateClient(ForClient("tok-bob").get(), check, &checked).ok());
  EXPECT_EQ(checked.tenant(), "bob");
  const grpc::Status status =
      stub_->AuthenticateClient(ForClient("tok-worker").get(), check, &checked);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(status.error_message(), HasSubstr("client's credential"));
  v1::OpenSequenceResponse opened;
  EXPECT_EQ(stub_->OpenSequence(ForClient("tok-worker").get(), Open(40, 4), &opened).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
}

TEST_F(ServiceSecurityTest, ATenantAtItsQuotaIsRefusedWithAReasonAndOthersAreNot) {
  // alice: max_blocks=4 (64 tokens). 40 prompt + 8 new = 3 blocks: fits once.
  v1::OpenSequenceResponse first, second;
  ASSERT_TRUE(stub_->OpenSequence(ForClient("tok-alice").get(), Open(40, 8), &first).ok());
  grpc::Status status = stub_->OpenSequence(ForClient("tok-alice").get(), Open(40, 8), &second);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_EQ(v1::ReasonOf(status), reason::kTenantQuotaExceeded);
  EXPECT_THAT(status.error_message(), HasSubstr("alice"));
  // bob (no cap of his own) is unaffected.
  ASSERT_TRUE(stub_->OpenSequence(ForClient("tok-bob").get(), Open(40, 8), &second).ok());
  // alice's Step past her cap fails per item with the reason, her blocks unchanged.
  v1::StepRequest step;
  step.set_worker_id(worker_id_);
  step.set_manager_instance(instance_);
  v1::StepItem* item = step.add_items();
  item->set_sequence_id(first.sequence_id());
  item->set_num_tokens(48);  // a 3rd block: within the cap
  v1::StepResponse stepped;
  ASSERT_TRUE(stub_->Step(Ctx("tok-worker").get(), step, &stepped).ok());
  EXPECT_EQ(stepped.results(0).code(), 0) << stepped.results(0).message();
  // A sequence that could never fit her cap is refused for good, not queued.
  status = stub_->OpenSequence(ForClient("tok-alice").get(), Open(40, 100), &second);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), HasSubstr("quota is 4 blocks"));
  // The client sees its own tenant's usage and quota.
  v1::GetStatsResponse stats;
  ASSERT_TRUE(stub_->GetStats(Ctx("tok-alice").get(), {}, &stats).ok());
  EXPECT_EQ(stats.tenant(), "alice");
  EXPECT_EQ(stats.tenant_blocks_in_use(), 3);
  EXPECT_EQ(stats.tenant_max_blocks(), 4);
  const std::string metrics = HttpGet(manager_->http_address(), "/metrics");
  EXPECT_THAT(metrics, HasSubstr("kvpool_tenant_blocks_in_use{tenant=\"alice\"} 3"));
  EXPECT_THAT(metrics, HasSubstr("kvpool_tenant_max_blocks{tenant=\"alice\"} 4"));
  EXPECT_THAT(metrics, HasSubstr("kvpool_tenant_quota_rejections_total{tenant=\"alice\"} 1"));
}

TEST_F(ServiceSecurityTest, AClientSeesOnlyItsOwnTenantsPrefixHits) {
  v1::OpenSequenceResponse opened;
  ASSERT_TRUE(stub_->OpenSequence(ForClient("tok-bob").get(), Open(40, 4), &opened).ok());
  v1::GetStatsResponse stats;
  ASSERT_TRUE(stub_->GetStats(Ctx("tok-bob").get(), {}, &stats).ok());
  EXPECT_EQ(stats.prefix_queries_tokens(), 40);
  ASSERT_TRUE(stub_->GetStats(Ctx("tok-alice").get(), {}, &stats).ok());
  EXPECT_EQ(stats.prefix_queries_tokens(), 0);  // bob's lookups are none of alice's business
  EXPECT_EQ(stats.in_use_blocks(), 3);          // the pool's occupancy is shared
  ASSERT_TRUE(stub_->GetStats(Ctx("tok-worker").get(), {}, &stats).ok());
  EXPECT_EQ(stats.prefix_queries_tokens(), 40);  // the operator's view: the whole node
  // /api/stats without a token is 401 (HttpGet sends none); /metrics stays open.
  EXPECT_THAT(HttpGet(manager_->http_address(), "/api/stats"), HasSubstr("401"));
  EXPECT_THAT(HttpGet(manager_->http_address(), "/metrics"), HasSubstr("200 OK"));
}

TEST_F(ServiceSecurityTest, NamesAreBoundedAndMustBeUtf8) {
  v1::RegisterWorkerRequest request;
  v1::RegisterWorkerResponse response;
  request.set_worker_name(std::string(256, 'w'));
  EXPECT_TRUE(stub_->RegisterWorker(Ctx("tok-worker").get(), request, &response).ok());
  request.set_worker_name(std::string(257, 'w'));
  grpc::Status status = stub_->RegisterWorker(Ctx("tok-worker").get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("worker_name"));
  EXPECT_THAT(status.error_message(), HasSubstr("256"));
  request.set_worker_name("w\xC3\x28");
  status = stub_->RegisterWorker(Ctx("tok-worker").get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("worker_name is not valid UTF-8"));
  request.set_worker_name("ok");
  request.set_model_name(std::string(256, 'm'));  // within the bound: only the wrong model
  status = stub_->RegisterWorker(Ctx("tok-worker").get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  request.set_model_name(std::string(257, 'm'));
  status = stub_->RegisterWorker(Ctx("tok-worker").get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("model_name has 257 bytes"));
  EXPECT_THAT(status.error_message(), HasSubstr("256"));
  request.set_model_name("\xFF");
  status = stub_->RegisterWorker(Ctx("tok-worker").get(), request, &response);
  EXPECT_THAT(status.error_message(), HasSubstr("model_name is not valid UTF-8"));
}

TEST(ServiceStartTest, ALeaseTtlNoWorkerCanKeepExitsTwoNamingTheMinimum) {
  Subprocess manager({KVPOOL_MANAGER_BIN, "--listen", "127.0.0.1:0", "--model", "tiny-gpt2",
                      "--num-blocks", "8", "--lease-ttl-ms", "10"},
                     MergedStderr());
  const std::optional<std::string> line = manager.ReadLine(std::chrono::seconds(10));
  ASSERT_TRUE(line.has_value());
  EXPECT_THAT(*line, HasSubstr("--lease-ttl-ms 10"));
  EXPECT_THAT(*line, HasSubstr("500"));
  const std::optional<int> status = manager.SignalAndWait(0, std::chrono::seconds(10));
  ASSERT_TRUE(status.has_value());
  ASSERT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 2);
  // At the minimum it serves.
  ManagerProcess at_minimum({"--model", "tiny-gpt2", "--num-blocks", "8", "--lease-ttl-ms", "500"});
  EXPECT_FALSE(at_minimum.address().empty());
}

}  // namespace
}  // namespace kvpool::manager::testing
