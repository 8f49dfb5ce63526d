// The real kvpool-manager answers every malformed request with the documented gRPC
// code and a message naming what to fix, and keeps serving afterwards; with a token
// file, calls without a valid bearer token are UNAUTHENTICATED and the tenant (the
// prefix-cache salt) follows the token, not the request.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include "tests/manager/service/manager_process.h"

namespace kvpool::manager::testing {
namespace {

using ::testing::HasSubstr;

constexpr int kNumBlocks = 64;  // x 16 tokens = 1024 slots

class ServiceErrorsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    manager_ =
        new ManagerProcess({"--model", "tiny-gpt2", "--num-blocks", std::to_string(kNumBlocks)});
  }
  static void TearDownTestSuite() {
    delete manager_;
    manager_ = nullptr;
  }
  void SetUp() override {
    ASSERT_FALSE(manager_->address().empty());
    stub_ = manager_->NewStub();
    v1::RegisterWorkerRequest request;
    request.set_worker_name("errors-test");
    v1::RegisterWorkerResponse response;
    ASSERT_TRUE(stub_->RegisterWorker(Ctx().get(), request, &response).ok());
    worker_id_ = response.worker_id();
    instance_ = response.manager_instance();
  }
  void TearDown() override {
    // Whatever the test did, the service still serves and its state is consistent.
    v1::CheckInvariantsResponse check;
    ASSERT_TRUE(stub_->CheckInvariants(Ctx().get(), {}, &check).ok());
    EXPECT_TRUE(check.ok()) << check.violation();
    v1::OpenSequenceRequest open = Open({1, 2, 3}, 4);
    v1::OpenSequenceResponse opened;
    ASSERT_TRUE(stub_->OpenSequence(Ctx().get(), open, &opened).ok());
    v1::CloseSequenceRequest close;
    close.set_worker_id(worker_id_);
    close.set_manager_instance(instance_);
    close.set_sequence_id(opened.sequence_id());
    v1::CloseSequenceResponse closed;
    EXPECT_TRUE(stub_->CloseSequence(Ctx().get(), close, &closed).ok());
  }

  v1::OpenSequenceRequest Open(std::vector<int32_t> tokens, int64_t max_tokens,
                               v1::SequenceMode mode = v1::SEQUENCE_MODE_PAGED) const {
    v1::OpenSequenceRequest request;
    request.set_worker_id(worker_id_);
    request.set_manager_instance(instance_);
    request.mutable_token_ids()->Add(tokens.begin(), tokens.end());
    request.set_max_tokens(max_tokens);
    request.set_mode(mode);
    return request;
  }
  grpc::Status CallOpen(const v1::OpenSequenceRequest& request) {
    v1::OpenSequenceResponse response;
    return stub_->OpenSequence(Ctx().get(), request, &response);
  }

  static ManagerProcess* manager_;
  std::unique_ptr<v1::CacheManager::Stub> stub_;
  int64_t worker_id_ = 0;
  std::string instance_;
};
ManagerProcess* ServiceErrorsTest::manager_ = nullptr;

TEST_F(ServiceErrorsTest, EmptyTokenListIsInvalidArgument) {
  const grpc::Status status = CallOpen(Open({}, 8));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("token_ids is empty"));
}

TEST_F(ServiceErrorsTest, NegativeTokenIdIsInvalidArgument) {
  const grpc::Status status = CallOpen(Open({5, -7, 9}, 8));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("token_ids[1] = -7 is negative"));
}

TEST_F(ServiceErrorsTest, WrongModeIsInvalidArgument) {
  for (int mode : {0, 7, -1}) {
    const grpc::Status status = CallOpen(Open({1, 2}, 8, static_cast<v1::SequenceMode>(mode)));
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << mode;
    EXPECT_THAT(status.error_message(), HasSubstr("SEQUENCE_MODE_PAGED")) << mode;
  }
}

TEST_F(ServiceErrorsTest, AbsurdMaxTokensIsInvalidArgument) {
  grpc::Status status = CallOpen(Open({1, 2}, 0));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("max_tokens must be > 0"));
  status = CallOpen(Open({1, 2}, -5));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  status = CallOpen(Open({1, 2}, int64_t{1} << 40));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("exceeds max_context_tokens"));
  status = CallOpen(Open({1, 2}, INT64_MAX));  // no overflow on prompt + max_tokens
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServiceErrorsTest, ContiguousLargerThanThePoolIsResourceExhausted) {
  const grpc::Status status =
      CallOpen(Open({1, 2}, kNumBlocks * 16 + 100, v1::SEQUENCE_MODE_CONTIGUOUS));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_FALSE(status.error_message().empty());
}

TEST_F(ServiceErrorsTest, UnknownSequenceIsNotFound) {
  v1::CloseSequenceRequest close;
  close.set_worker_id(worker_id_);
  close.set_manager_instance(instance_);
  close.set_sequence_id(987654321);
  v1::CloseSequenceResponse closed;
  grpc::Status status = stub_->CloseSequence(Ctx().get(), close, &closed);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(status.error_message(), HasSubstr("987654321"));

  v1::ForkRequest fork;
  fork.set_worker_id(worker_id_);
  fork.set_manager_instance(instance_);
  fork.set_sequence_id(987654321);
  v1::ForkResponse forked;
  status = stub_->Fork(Ctx().get(), fork, &forked);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);

  // In a Step, an unknown or malformed item fails alone; the call succeeds.
  v1::StepRequest step;
  step.set_worker_id(worker_id_);
  step.set_manager_instance(instance_);
  v1::StepItem* unknown = step.add_items();
  unknown->set_sequence_id(987654321);
  unknown->set_num_tokens(1);
  v1::StepItem* negative = step.add_items();
  negative->set_sequence_id(-3);
  v1::StepResponse stepped;
  status = stub_->Step(Ctx().get(), step, &stepped);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(stepped.results_size(), 2);
  EXPECT_EQ(stepped.results(0).code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(stepped.results(1).code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(stepped.results(1).message(), HasSubstr("negative"));
}

TEST_F(ServiceErrorsTest, NegativeIdsAreInvalidArgument) {
  v1::CloseSequenceRequest close;
  close.set_worker_id(worker_id_);
  close.set_manager_instance(instance_);
  close.set_sequence_id(-1);
  v1::CloseSequenceResponse closed;
  EXPECT_EQ(stub_->CloseSequence(Ctx().get(), close, &closed).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  v1::HeartbeatRequest beat;
  beat.set_worker_id(-4);
  beat.set_manager_instance(instance_);
  v1::HeartbeatResponse beaten;
  const grpc::Status status = stub_->Heartbeat(Ctx().get(), beat, &beaten);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("RegisterWorker"));
}

TEST_F(ServiceErrorsTest, UnknownWorkerIsNotFound) {
  v1::OpenSequenceRequest request = Open({1, 2, 3}, 4);
  request.set_worker_id(worker_id_ + 100000);
  request.set_manager_instance(instance_);
  const grpc::Status status = CallOpen(request);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(status.error_message(), HasSubstr("RegisterWorker"));
}

TEST_F(ServiceErrorsTest, MismatchedModelOrGeometryIsFailedPrecondition) {
  v1::RegisterWorkerRequest request;
  request.set_model_name("gpt2");
  v1::RegisterWorkerResponse response;
  grpc::Status status = stub_->RegisterWorker(Ctx().get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), HasSubstr("tiny-gpt2"));

  request.set_model_name("tiny-gpt2");
  v1::PoolGeometry* geometry = request.mutable_expected_geometry();
  geometry->set_num_layers(2);
  geometry->set_num_kv_heads(4);
  geometry->set_head_dim(64);
  geometry->set_block_size(16);
  status = stub_->RegisterWorker(Ctx().get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), HasSubstr("head_dim"));

  geometry->set_head_dim(16);
  status = stub_->RegisterWorker(Ctx().get(), request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.pool().backend(), "shm");
  EXPECT_THAT(response.pool().shm_name(), HasSubstr("/kvpool-"));
  EXPECT_EQ(response.pool().num_blocks(), kNumBlocks);
  EXPECT_EQ(response.pool().block_bytes(), 2 * 2 * 16 * 4 * 16 * 4);
  EXPECT_EQ(response.pool().pool_bytes(), kNumBlocks * response.pool().block_bytes());
  EXPECT_EQ(response.pool().dtype(), v1::KV_DTYPE_FP32);
}

// --- auth -------------------------------------------------------------------------

class ServiceAuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    token_file_ = ::testing::TempDir() + "kvpool_tokens_" + std::to_string(getpid());
    std::ofstream(token_file_) << "# token tenant\ntok-alice alice\ntok-bob bob\n";
    manager_ = std::make_unique<ManagerProcess>(std::vector<std::string>{
        "--model", "tiny-llama", "--num-blocks", "64", "--auth-token-file", token_file_});
    ASSERT_FALSE(manager_->address().empty());
    stub_ = manager_->NewStub();
  }
  void TearDown() override { std::remove(token_file_.c_str()); }

  int64_t Register(const std::string& token) {
    v1::RegisterWorkerResponse response;
    EXPECT_TRUE(stub_->RegisterWorker(Ctx(token).get(), {}, &response).ok());
    instance_ = response.manager_instance();
    return response.worker_id();
  }
  // Opens the prompt, commits it whole, closes; returns the cached tokens it found.
  int64_t OpenCommitClose(const std::string& token, int64_t worker,
                          const std::vector<int32_t>& prompt) {
    v1::OpenSequenceRequest open;
    open.set_worker_id(worker);
    open.set_manager_instance(instance_);
    open.mutable_token_ids()->Add(prompt.begin(), prompt.end());
    open.set_max_tokens(4);
    open.set_mode(v1::SEQUENCE_MODE_PAGED);
    v1::OpenSequenceResponse opened;
    EXPECT_TRUE(stub_->OpenSequence(Ctx(token).get(), open, &opened).ok());
    v1::StepRequest step;
    step.set_worker_id(worker);
    step.set_manager_instance(instance_);
    v1::StepItem* item = step.add_items();
    item->set_sequence_id(opened.sequence_id());
    item->set_num_tokens(static_cast<int64_t>(prompt.size()));
    item->mutable_commit_token_ids()->Add(prompt.begin() + opened.cached_tokens(), prompt.end());
    v1::StepResponse stepped;
    EXPECT_TRUE(stub_->Step(Ctx(token).get(), step, &stepped).ok());
    EXPECT_EQ(stepped.results(0).code(), 0) << stepped.results(0).message();
    v1::CloseSequenceRequest close;
    close.set_worker_id(worker);
    close.set_manager_instance(instance_);
    close.set_sequence_id(opened.sequence_id());
    v1::CloseSequenceResponse closed;
    EXPECT_TRUE(stub_->CloseSequence(Ctx(token).get(), close, &closed).ok());
    return opened.cached_tokens();
  }

  std::string token_file_;
  std::string instance_;  // the manager's, from the latest Register
  std::unique_ptr<ManagerProcess> manager_;
  std::unique_ptr<v1::CacheManager::Stub> stub_;
};

TEST_F(ServiceAuthTest, MissingOrWrongBearerTokenIsUnauthenticated) {
  v1::RegisterWorkerResponse response;
  grpc::Status status = stub_->RegisterWorker(Ctx().get(), {}, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(status.error_message(), HasSubstr("authorization: Bearer"));

  status = stub_->RegisterWorker(Ctx("tok-mallory").get(), {}, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(status.error_message(), HasSubstr("unknown bearer token"));

  auto basic = Ctx();
  basic->AddMetadata("authorization", "Basic dG9rLWFsaWNl");
  status = stub_->RegisterWorker(basic.get(), {}, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);

  v1::GetStatsResponse stats;
  EXPECT_EQ(stub_->GetStats(Ctx().get(), {}, &stats).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  // Still serving, for a caller with a valid token.
  EXPECT_TRUE(stub_->GetStats(Ctx("tok-bob").get(), {}, &stats).ok());
  EXPECT_GT(Register("tok-alice"), 0);
}

TEST_F(ServiceAuthTest, WorkerOfAnotherTenantIsNotFound) {
  const int64_t alice_worker = Register("tok-alice");
  v1::HeartbeatRequest beat;
  beat.set_worker_id(alice_worker);
  beat.set_manager_instance(instance_);
  v1::HeartbeatResponse beaten;
  EXPECT_TRUE(stub_->Heartbeat(Ctx("tok-alice").get(), beat, &beaten).ok());
  EXPECT_EQ(stub_->Heartbeat(Ctx("tok-bob").get(), beat, &beaten).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServiceAuthTest, PrefixCacheIsSaltedByTheTokensTenant) {
  std::vector<int32_t> prompt(40);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>(100 + i);
  const int64_t alice = Register("tok-alice"), bob = Register("tok-bob");
  EXPECT_EQ(OpenCommitClose("tok-alice", alice, prompt), 0);
  EXPECT_EQ(OpenCommitClose("tok-bob", bob, prompt), 0);       // another tenant: no hit
  EXPECT_EQ(OpenCommitClose("tok-alice", alice, prompt), 32);  // 2 full blocks of 16
}

}  // namespace
}  // namespace kvpool::manager::testing
