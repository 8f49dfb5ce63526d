// ManagerClient: the worker's typed client of the cache manager's sequence protocol
// (manager.proto: AuthenticateClient, OpenSequence, Step, Fork, CloseSequence). It is
// the only code in the worker that builds or reads those protobufs: every call names
// the attachment's worker id and manager instance, carries the worker's credential
// (and the end client's where the manager authenticates one), reports its duration to
// the caller's counter, and returns plain values or a Status with the manager's code
// and reason (IsLinkLoss says when the attachment is gone). Registration and
// heartbeats stay with ManagerLink. It holds no sequence state, never runs the model,
// and is used from the scheduler thread only.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "common/status.h"
#include "service/manager_link.h"

namespace kvpool::worker {

struct OpenedSequence {
  int64_t sequence_id = 0;
  std::vector<int32_t> block_table;  // the prompt's (contiguous: prompt + max_tokens)
  int64_t cached_tokens = 0;         // leading prompt tokens already in the pool
  int64_t allocatable_blocks = 0;    // free or evictable blocks left in the pool
};

// One sequence's part of a Step: hold `num_tokens` slots and commit the tokens whose
// K/V were written since the last commit.
struct StepItemRequest {
  int64_t sequence_id = 0;
  int64_t num_tokens = 0;
  std::vector<int32_t> commit_token_ids;
};

struct StepItemOutcome {
  Status status;                    // RESOURCE_EXHAUSTED: preempt (reason: whose)
  std::vector<int32_t> new_blocks;  // appended to the sequence's table
};

struct ForkedSequence {
  int64_t sequence_id = 0;
  std::vector<int32_t> block_table;
  int32_t copy_src_block = -1, copy_dst_block = -1;  // copy on write, -1 when none
};

class ManagerClient {
 public:
  // `on_call` runs after every call with its duration (the worker's counters).
  ManagerClient(ManagerLink* link, std::function<void(std::chrono::nanoseconds)> on_call);

  // The attachment the calls go to (null: none; calls then fail UNAVAILABLE).
  void Attach(std::shared_ptr<const Attachment> attachment) { attachment_ = std::move(attachment); }
  // Tokens one Step may commit: the manager's per-call cap, at most 2^16.
  int64_t CommitBudget() const;

  // The tenant of the end client whose "authorization" value is `client_authorization`
  // (empty: anonymous, refused when the manager has auth on).
  StatusOr<std::string> AuthenticateClient(const std::string& client_authorization);
  // A sequence of `prompt` for that client, its prefix-cache salt the client's tenant.
  StatusOr<OpenedSequence> Open(const std::vector<int32_t>& prompt, KvMode mode, int64_t max_tokens,
                                const std::string& client_authorization);
  // One batched Step; one outcome per item, in order.
  StatusOr<std::vector<StepItemOutcome>> Step(const std::vector<StepItemRequest>& items);
  StatusOr<ForkedSequence> Fork(int64_t parent_sequence_id);
  Status Close(int64_t sequence_id);

 private:
  template <typename Request, typename Response>
  using Rpc = grpc::Status (v1::CacheManager::Stub::*)(grpc::ClientContext*, const Request&,
                                                       Response*);
  // One call: names this attachment's worker and manager instance, forwards the end
  // client's credential when given, reports its duration; `what` prefixes the error.
  template <typename Request, typename Response>
  Status Call(Rpc<Request, Response> rpc, Request& request, Response* response, const char* what,
              const std::string* client_authorization = nullptr);

  ManagerLink* const link_;
  const std::function<void(std::chrono::nanoseconds)> on_call_;
  std::shared_ptr<const Attachment> attachment_;
};

}  // namespace kvpool::worker
