// Where an engine sequence stands for the commit planner: the one translation from
// the engine's Sequence (tokens, block table, K/V written) and the caller's record of
// what the manager committed into CommitProgress, for the worker's scheduler and the
// offline engine alike. Header-only; it decides nothing.
#pragma once

#include <cstdint>

#include "engine/engine.h"
#include "service/commit_planner.h"

namespace kvpool::worker {

inline CommitProgress ProgressOf(const Sequence& q, int64_t block_size, int64_t committed) {
  CommitProgress p;
  p.slots = static_cast<int64_t>(q.tokens.size());
  p.held_slots = static_cast<int64_t>(q.block_table.size()) * block_size;
  p.written = q.num_kv_tokens;
  p.committed = committed;
  p.publishes = q.request.mode == KvMode::kPaged;
  return p;
}

}  // namespace kvpool::worker
