// KvPolicy: the scheduler's decisions about the KV cache, made against a ManagerApi
// and nothing else (no model, no engine, no protobufs), so that they are unit-tested
// with an in-memory manager:
//  - admission: which waiting sample goes next (tenants take turns, fair_admission.h),
//    whether the pool can take it (a request larger than the whole pool fails; a full
//    pool pauses admission until a sample leaves; a tenant at its quota waits while the
//    others go on), the prefill budget per iteration, and the headroom rule (stop
//    admitting while fewer than `headroom_blocks` free blocks are left per running
//    sample);
//  - one Step round: which samples one call carries, the slots each must hold and the
//    full blocks each commits, within the manager's per-call budget
//    (commit_planner.h); it alone advances Sample::committed;
//  - preemption: the newest running sample goes first; for a tenant at its quota, its
//    own newest, never another tenant's.
// Carrying out a decision (adding to the engine, swapping out, failing a job) is the
// scheduler's. Scheduler thread only.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/status.h"
#include "service/commit_planner.h"
#include "service/manager_api.h"
#include "service/sample.h"

namespace kvpool::worker {

struct KvPolicyOptions {
  int32_t max_running = 64;           // samples decoded together at most
  int64_t max_prefill_tokens = 4096;  // prompt tokens prefilled per iteration (>= one prompt)
  int64_t headroom_blocks = 4;        // free blocks per running sample to keep admitting
};

// A sample admitted this iteration: its manager sequence is open (none mode: no
// sequence), not yet added to the engine.
struct AdmittedSample {
  Sample* sample = nullptr;
  std::vector<int32_t> prompt;  // Sample::PromptNow()
  OpenedSequence opened;        // sequence_id 0 in none mode
};

struct AdmissionResult {
  std::vector<AdmittedSample> admitted;  // in admission order
  // Jobs that can never run (too large for the pool, refused by the manager); their
  // samples left the waiting queue.
  std::vector<std::pair<std::shared_ptr<Job>, Status>> failed;
  Status link_lost = Status::Ok();  // not ok: the attachment is gone (IsLinkLoss)
};

// One sample's part of a Step round.
struct StepOutcome {
  Sample* sample = nullptr;
  Status status;                    // RESOURCE_EXHAUSTED: a preemption is due
  std::vector<int32_t> new_blocks;  // for the engine's block table
};

struct StepRound {
  bool called = false;              // false: nothing to ask or commit
  Status call_status = Status::Ok();  // the call as a whole (link loss: IsLinkLoss)
  std::vector<StepOutcome> outcomes;  // one per sample the call carried (its status
                                      // the call's when the call failed)
  bool exhausted = false;             // some item got RESOURCE_EXHAUSTED
  bool more = false;                  // full blocks left over the budget
  const std::string* quota_tenant = nullptr;  // the first tenant refused for its quota
};

class KvPolicy {
 public:
  KvPolicy(KvPolicyOptions options, ManagerApi* manager);

  // A new attachment: the pool's geometry; clears the pause and fairness state.
  void Reset(int32_t block_size, int64_t num_blocks);

  // Takes samples off `waiting` while the pool, the budget and `num_running` allow,
  // opening their manager sequences. Dead samples are dropped from `waiting`.
  AdmissionResult Admit(std::deque<Sample*>& waiting, int64_t num_running);
  // A sample left the pool (its blocks came back): admission may go on.
  void Resume() { paused_ = false; }
  // The pool was full: admission waits until a sample leaves.
  void Pause() { paused_ = true; }
  bool paused() const { return paused_; }
  // The pool was full with nothing running here: poll again shortly.
  bool retry_soon() const { return retry_soon_; }
  // An admission number for a sample that starts running outside Admit (a fork).
  int64_t NextOrder() { return next_order_++; }

  // One Step for `samples` (each with its engine sequence's `progress` and `tokens`):
  // with `grant`, the slots for their next token and the full blocks to commit (before
  // a forward); without, only the full blocks of paged samples (they ended). Updates
  // Sample::committed for every item the manager accepted.
  StepRound Step(const std::vector<Sample*>& samples,
                 const std::vector<CommitProgress>& progress,
                 const std::vector<const std::vector<int32_t>*>& tokens, bool grant);
  // Commits every token of `sample` whose K/V is written, partial block included (the
  // manager forks what is committed).
  Status CommitAll(Sample& sample, const std::vector<int32_t>& tokens, int64_t written);

  // The sample to preempt from `running`: the newest with a manager sequence, of
  // `tenant` when given; null when there is none.
  static Sample* Victim(const std::vector<Sample*>& running, const std::string* tenant);

 private:
  const KvPolicyOptions options_;
  ManagerApi* const manager_;
  int32_t block_size_ = 0;
  int64_t num_blocks_ = 0;
  bool paused_ = false;      // after a preemption or a full pool, until a sample leaves
  bool retry_soon_ = false;  // the pool was full at admission: poll again shortly
  int64_t next_order_ = 0;
  // Each tenant's latest admission (next_order_ then), for fair admission.
  std::unordered_map<std::string, int64_t> last_admitted_;
};

}  // namespace kvpool::worker
