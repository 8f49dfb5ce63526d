// ManagerApi: what the worker's scheduler asks of the cache manager, as plain values:
// authenticate a client, open a sequence (its block table and prefix hit), one batched
// Step (grant slots, commit full blocks), fork, close. ManagerClient implements it over
// gRPC; the scheduling policy's unit tests implement it in memory. It never holds
// sequence state and never names a protobuf: the manager's codes and reasons arrive
// as kvpool::Status (IsLinkLoss in manager_link.h says when the attachment is gone).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/kv_mode.h"
#include "common/status.h"

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

// A prefix pin the manager made (manager.proto PinInfo).
struct PinOutcome {
  int64_t pin_id = 0;
  int64_t pinned_tokens = 0;
  int64_t expires_in_ms = 0;
  int32_t priority = -1;  // the blocks' retention priority when it ends; -1: as they are
};

struct ForkedSequence {
  int64_t sequence_id = 0;
  std::vector<int32_t> block_table;
  int32_t copy_src_block = -1, copy_dst_block = -1;  // copy on write, -1 when none
};

// A manager call failed in a way that ends the attachment: the manager is gone or
// shutting down (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED: the worker never cancels
// its own calls), it restarted (MANAGER_RESTARTED) or it forgot this worker
// (WORKER_NOT_REGISTERED, a lease that ran out).
inline bool IsLinkLoss(const Status& status) {
  switch (status.code()) {
    case StatusCode::kUnavailable:
    case StatusCode::kDeadlineExceeded:
    case StatusCode::kCancelled:
      return true;
    default:
      return status.reason() == reason::kManagerRestarted ||
             status.reason() == reason::kWorkerNotRegistered;
  }
}

class ManagerApi {
 public:
  virtual ~ManagerApi() = default;
  // Tokens one Step may commit: the manager's per-call cap.
  virtual int64_t CommitBudget() const = 0;
  // The tenant of the end client whose "authorization" value is `client_authorization`
  // (empty: anonymous, refused when the manager has auth on).
  virtual StatusOr<std::string> AuthenticateClient(const std::string& client_authorization) = 0;
  // A sequence of `prompt` for that client, its prefix-cache salt the client's tenant;
  // its prompt's full blocks get `retention_priority` when it closes (-1: as they are).
  virtual StatusOr<OpenedSequence> Open(const std::vector<int32_t>& prompt, KvMode mode,
                                        int64_t max_tokens, int32_t retention_priority,
                                        const std::string& client_authorization) = 0;
  // One batched Step; one outcome per item, in order.
  virtual StatusOr<std::vector<StepItemOutcome>> Step(
      const std::vector<StepItemRequest>& items) = 0;
  virtual StatusOr<ForkedSequence> Fork(int64_t parent_sequence_id) = 0;
  virtual Status Close(int64_t sequence_id) = 0;
  // Pins `prompt`'s leading cached full blocks for `ttl_ms`, for that client (manager.proto
  // PinPrefix). UNIMPLEMENTED where the manager cannot pin.
  virtual StatusOr<PinOutcome> Pin(const std::vector<int32_t>& prompt, int64_t ttl_ms,
                                   int32_t retention_priority,
                                   const std::string& client_authorization) {
    (void)prompt, (void)ttl_ms, (void)retention_priority, (void)client_authorization;
    return Status(StatusCode::kUnimplemented, "this cache manager cannot pin prefixes");
  }
};

}  // namespace kvpool::worker
