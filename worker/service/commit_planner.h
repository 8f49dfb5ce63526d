// The commit planner: which sequences one Step call to the manager carries, with how
// many slots each must hold and up to which token each commits. One rule for both
// uses (granting blocks before a forward, publishing full blocks when sequences end):
// only whole blocks whose K/V are written are committed (a contiguous sequence
// publishes nothing), lazily, and one call commits at most `budget` tokens (the
// manager's per-call cap): what does not fit waits for a later call. Pure and
// header-only: no manager, no model, unit-tested on its own.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace kvpool::worker {

// Where one sequence stands, in tokens.
struct CommitProgress {
  int64_t slots = 0;       // slots it needs after this step (its tokens so far)
  int64_t held_slots = 0;  // slots its block table covers (blocks * block_size)
  int64_t written = 0;     // tokens whose K/V are in the pool
  int64_t committed = 0;   // tokens the manager counts as committed (whole blocks)
  bool publishes = true;   // paged: full blocks become shareable; contiguous: never
};

struct PlannedItem {
  size_t index = 0;        // into the planner's input
  int64_t num_tokens = 0;  // slots to hold after the call
  int64_t commit_to = 0;   // commit tokens [committed, commit_to)
};

struct StepPlan {
  std::vector<PlannedItem> items;
  bool more = false;  // some full blocks did not fit the budget: call again
};

// `grant`: also ask for the slots each sequence needs (before a forward); otherwise
// only publish the full blocks (sequences that ended; only those that publish).
inline StepPlan PlanStep(const std::vector<CommitProgress>& seqs, int64_t block_size,
                         int64_t budget, bool grant) {
  StepPlan plan;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const CommitProgress& s = seqs[i];
    if (!grant && !s.publishes) continue;
    const int64_t full = s.publishes ? s.written / block_size * block_size : s.committed;
    const int64_t commit_to =
        std::max(s.committed, std::min(full, s.committed + budget / block_size * block_size));
    plan.more = plan.more || commit_to < full;
    const bool needs_slots = grant && s.slots > s.held_slots;
    if (!needs_slots && commit_to <= s.committed) continue;
    budget -= commit_to - s.committed;
    plan.items.push_back({i, grant ? s.slots : s.written, commit_to});
  }
  return plan;
}

}  // namespace kvpool::worker
