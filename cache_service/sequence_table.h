// SequenceTable: every open sequence (its owner worker, mode, block table, committed
// tokens and the hashes of its full committed blocks) and the index from worker to its
// sequences. It owns that bookkeeping only: it never takes or frees blocks (the cache
// manager does, through the block pool) and never decides validity.
//
// Invariants of a Sequence (checked by CacheManager::CheckInvariants):
//   committed_token_ids.size() <= num_tokens <= max_total_tokens;
//   paged: block_table.size() == ceil(num_tokens / block_size) and block_hashes holds
//          exactly the hashes of the committed full blocks, chained from the salt;
//   contiguous: block_table is a run of consecutive ids covering max_total_tokens and
//          block_hashes is empty (contiguous sequences never use the prefix cache).
#pragma once

#include <cstdint>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "cache_service/block_hash.h"
#include "cache_service/cache_manager.h"

namespace kvpool::manager {

struct Sequence {
  SequenceId id = 0;
  WorkerId worker = 0;
  int32_t tenant = 0;  // index in the cache manager's tenant table: whose quota it uses
  KvMode mode = KvMode::kPaged;
  BlockHash salt;                // the tenant's, for the first block's hash
  int64_t max_total_tokens = 0;  // prompt + max_tokens
  int64_t prompt_tokens = 0;
  int32_t retention_priority = -1;  // its prompt's full blocks' when it closes; -1: as is
  int64_t num_tokens = 0;           // slots the worker holds (may write)
  std::vector<int32_t> block_table;
  std::vector<int32_t> committed_token_ids;  // tokens whose K/V are in the pool
  std::vector<BlockHash> block_hashes;       // of the full committed blocks (paged)
};

class SequenceTable {
 public:
  // Stores `sequence` under a fresh id (ids start at 1 and are never reused).
  Sequence& Add(Sequence sequence);
  Sequence* Find(SequenceId id);
  const Sequence* Find(SequenceId id) const;
  void Remove(SequenceId id);
  // The worker's sequence ids (in no particular order).
  std::vector<SequenceId> SequencesOf(WorkerId worker) const;
  int64_t CountOf(WorkerId worker) const;
  int64_t size() const { return static_cast<int64_t>(sequences_.size()); }

  template <typename Fn>
  void ForEach(Fn&& fn) const {
    for (const auto& [id, sequence] : sequences_) fn(sequence);
  }

 private:
  SequenceId next_id_ = 1;
  std::unordered_map<SequenceId, Sequence> sequences_;
  std::unordered_map<WorkerId, std::unordered_set<SequenceId>> by_worker_;
};

}  // namespace kvpool::manager
