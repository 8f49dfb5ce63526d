// InProcessManager: ManagerApi over the cache manager's core (kvpool_manager_core)
// linked into this process, with no gRPC and no LibTorch: the same allocator, prefix
// index, quotas and leases a kvpool-manager runs, for code that drives the KV policy or
// an engine without a manager process (unit tests of the policy against the real
// allocator; the engine tools next). It registers one worker and renews its lease on
// every call. There is no authentication in process: a client credential names its
// tenant directly (empty: "default"). Not thread-safe beyond what CacheManager is.
#pragma once

#include <string>
#include <vector>

#include "cache_service/cache_manager.h"
#include "service/manager_api.h"

namespace kvpool::worker {

class InProcessManager final : public ManagerApi {
 public:
  explicit InProcessManager(manager::CacheManager* core);

  manager::WorkerId worker_id() const { return worker_; }

  int64_t CommitBudget() const override;
  StatusOr<std::string> AuthenticateClient(const std::string& client_authorization) override;
  StatusOr<OpenedSequence> Open(const std::vector<int32_t>& prompt, KvMode mode, int64_t max_tokens,
                                int32_t retention_priority,
                                const std::string& client_authorization) override;
  StatusOr<std::vector<StepItemOutcome>> Step(const std::vector<StepItemRequest>& items) override;
  StatusOr<ForkedSequence> Fork(int64_t parent_sequence_id) override;
  Status Close(int64_t sequence_id) override;

 private:
  manager::CacheManager* const core_;
  const manager::WorkerId worker_;
};

}  // namespace kvpool::worker
