// Many clients at once against the real kvpool-manager: 16 threads, each its own
// worker, open / step / commit / fork / close sequences in both modes over a shared
// prompt prefix (so prefix-cache hits and shared blocks happen across threads). At the
// end the manager's invariant check passes and no block or sequence is left in use.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "tests/manager/service/manager_process.h"

namespace kvpool::manager::testing {
namespace {

constexpr int kThreads = 16;
constexpr int kSequencesPerThread = 25;
constexpr int kDecodeSteps = 6;

// One thread's traffic; returns the number of failed expectations as a string.
std::string RunClient(const ManagerProcess& manager, int thread) {
  auto stub = manager.NewStub();
  v1::RegisterWorkerRequest reg;
  reg.set_worker_name("load-" + std::to_string(thread));
  v1::RegisterWorkerResponse worker;
  grpc::Status status = stub->RegisterWorker(Ctx().get(), reg, &worker);
  if (!status.ok()) return "register: " + status.error_message();
  for (int s = 0; s < kSequencesPerThread; ++s) {
    std::vector<int32_t> prompt;
    for (int i = 0; i < 32; ++i) prompt.push_back(i);  // shared by every thread
    for (int i = 0; i < 3 + s % 20; ++i) prompt.push_back(1000 * thread + s + i);
    const bool paged = s % 4 != 3;
    v1::OpenSequenceRequest open;
    open.set_worker_id(worker.worker_id());
    open.set_manager_instance(worker.manager_instance());
    open.mutable_token_ids()->Add(prompt.begin(), prompt.end());
    open.set_max_tokens(kDecodeSteps + 1);
    open.set_mode(paged ? v1::SEQUENCE_MODE_PAGED : v1::SEQUENCE_MODE_CONTIGUOUS);
    v1::OpenSequenceResponse opened;
    status = stub->OpenSequence(Ctx().get(), open, &opened);
    if (!status.ok()) return "open: " + status.error_message();
    std::vector<int64_t> sequences = {opened.sequence_id()};
    int64_t num_tokens = static_cast<int64_t>(prompt.size());
    std::vector<int32_t> commit(prompt.begin() + opened.cached_tokens(), prompt.end());
    for (int step = 0; step < kDecodeSteps; ++step) {
      ++num_tokens;
      v1::StepRequest request;
      request.set_worker_id(worker.worker_id());
      request.set_manager_instance(worker.manager_instance());
      for (int64_t id : sequences) {
        v1::StepItem* item = request.add_items();
        item->set_sequence_id(id);
        item->set_num_tokens(num_tokens);
        // A fork shares everything committed, so both commit the same tokens.
        item->mutable_commit_token_ids()->Add(commit.begin(), commit.end());
      }
      v1::StepResponse response;
      status = stub->Step(Ctx().get(), request, &response);
      if (!status.ok()) return "step: " + status.error_message();
      for (const v1::StepItemResult& result : response.results()) {
        if (result.code() != 0) return "step item: " + result.message();
      }
      commit = {static_cast<int32_t>(50000 + step)};
      if (paged && step == 2 && s % 2 == 0) {
        // Fork after this step's commit... the child shares the committed prefix.
        v1::ForkRequest fork;
        fork.set_worker_id(worker.worker_id());
        fork.set_manager_instance(worker.manager_instance());
        fork.set_sequence_id(sequences[0]);
        v1::ForkResponse forked;
        status = stub->Fork(Ctx().get(), fork, &forked);
        if (!status.ok()) return "fork: " + status.error_message();
        sequences.push_back(forked.sequence_id());
      }
    }
    for (int64_t id : sequences) {
      v1::CloseSequenceRequest close;
      close.set_worker_id(worker.worker_id());
      close.set_manager_instance(worker.manager_instance());
      close.set_sequence_id(id);
      v1::CloseSequenceResponse closed;
      status = stub->CloseSequence(Ctx().get(), close, &closed);
      if (!status.ok()) return "close: " + status.error_message();
    }
  }
  return "";
}

TEST(ServiceLoadTest, SixteenClientsLeaveNoBlockInUse) {
  ManagerProcess manager({"--model", "tiny-gpt2", "--num-blocks", "1024"});
  ASSERT_FALSE(manager.address().empty());
  std::vector<std::string> errors(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] { errors[t] = RunClient(manager, t); });
  }
  for (std::thread& thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(errors[t], "") << "thread " << t;

  auto stub = manager.NewStub();
  v1::CheckInvariantsResponse check;
  ASSERT_TRUE(stub->CheckInvariants(Ctx().get(), {}, &check).ok());
  EXPECT_TRUE(check.ok()) << check.violation();
  v1::GetStatsResponse stats;
  ASSERT_TRUE(stub->GetStats(Ctx().get(), {}, &stats).ok());
  EXPECT_EQ(stats.in_use_blocks(), 0);
  EXPECT_EQ(stats.num_sequences(), 0);
  EXPECT_EQ(stats.free_blocks() + stats.cached_blocks(), 1024);
  EXPECT_GT(stats.prefix_hits_tokens(), 0);  // the shared 32-token prefix was reused
}

}  // namespace
}  // namespace kvpool::manager::testing
