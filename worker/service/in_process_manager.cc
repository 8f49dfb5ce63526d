// InProcessManager: see in_process_manager.h.
#include "service/in_process_manager.h"

namespace kvpool::worker {
namespace {

manager::Clock::time_point Now() { return manager::Clock::now(); }

}  // namespace

InProcessManager::InProcessManager(manager::CacheManager* core)
    : core_(core), worker_(core->RegisterWorker(Now()).worker_id) {}

int64_t InProcessManager::CommitBudget() const { return core_->options().max_tokens_per_call; }

StatusOr<std::string> InProcessManager::AuthenticateClient(
    const std::string& client_authorization) {
  return client_authorization.empty() ? std::string("default") : client_authorization;
}

StatusOr<OpenedSequence> InProcessManager::Open(const std::vector<int32_t>& prompt, KvMode mode,
                                                int64_t max_tokens, int32_t retention_priority,
                                                const std::string& client_authorization) {
  manager::OpenRequest request;
  request.retention_priority = retention_priority;
  request.worker_id = worker_;
  KVPOOL_ASSIGN_OR_RETURN(request.tenant, AuthenticateClient(client_authorization));
  request.token_ids = prompt;
  request.mode = mode;
  request.max_tokens = max_tokens;
  KVPOOL_ASSIGN_OR_RETURN(manager::OpenResult result, core_->OpenSequence(request, Now()));
  OpenedSequence opened;
  opened.sequence_id = result.sequence_id;
  opened.block_table = std::move(result.block_table);
  opened.cached_tokens = result.cached_tokens;
  opened.allocatable_blocks = result.allocatable_blocks;
  return opened;
}

StatusOr<std::vector<StepItemOutcome>> InProcessManager::Step(
    const std::vector<StepItemRequest>& items) {
  std::vector<manager::StepItem> core_items(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    core_items[i].sequence_id = items[i].sequence_id;
    core_items[i].num_tokens = items[i].num_tokens;
    core_items[i].commit_token_ids = items[i].commit_token_ids;
  }
  KVPOOL_ASSIGN_OR_RETURN(std::vector<manager::StepItemResult> results,
                          core_->Step(worker_, core_items, Now()));
  std::vector<StepItemOutcome> outcomes(results.size());
  for (size_t i = 0; i < results.size(); ++i) {
    outcomes[i].status = std::move(results[i].status);
    outcomes[i].new_blocks = std::move(results[i].new_blocks);
  }
  return outcomes;
}

StatusOr<ForkedSequence> InProcessManager::Fork(int64_t parent_sequence_id) {
  KVPOOL_ASSIGN_OR_RETURN(manager::ForkResult result,
                          core_->Fork(worker_, parent_sequence_id, Now()));
  ForkedSequence forked;
  forked.sequence_id = result.sequence_id;
  forked.block_table = std::move(result.block_table);
  forked.copy_src_block = result.copy_src_block;
  forked.copy_dst_block = result.copy_dst_block;
  return forked;
}

Status InProcessManager::Close(int64_t sequence_id) {
  return core_->CloseSequence(worker_, sequence_id, Now());
}

}  // namespace kvpool::worker
