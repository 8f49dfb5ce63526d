// PinTable: the prefix pins. A pin is a tenant's request that a prompt's full blocks
// stay resident until a deadline (vLLM #23083, #8333; TensorRT-LLM's retention with a
// duration): the pin holds one reference on each block, so the pool cannot evict them,
// and they count against the tenant's block quota and its pinned-block cap. The table
// owns that bookkeeping only (each pin's blocks, tenant, deadline, and the retention
// priority its blocks get when it ends, and each tenant's pinned-block count); the
// cache manager takes and drops the references through the block pool.
//
// Invariant (checked by CacheManager::CheckInvariants): pinned_blocks(t) is the sum of
// the sizes of tenant t's pins; a block in two pins counts twice.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <vector>

#include "cache_service/block_hash.h"

namespace kvpool::manager {

using PinId = int64_t;

struct PrefixPin {
  PinId id = 0;
  int32_t tenant = 0;           // index in the cache manager's tenant table
  std::vector<int32_t> blocks;  // the prompt's leading full blocks, in order
  std::chrono::steady_clock::time_point expires_at{};
  int32_t retention_priority = -1;  // the blocks' priority when the pin ends; -1: as is
};

class PinTable {
 public:
  // Stores `pin` under a fresh id (ids start at 1 and are never reused).
  PrefixPin& Add(PrefixPin pin);
  PrefixPin* Find(PinId id);
  // Tenant `tenant`'s pin of exactly `blocks`, if any: pinning it again renews it.
  PrefixPin* FindSame(int32_t tenant, const std::vector<int32_t>& blocks);
  void Remove(PinId id);
  // The pins whose deadline is at or before `now`, by id.
  std::vector<PinId> Expired(std::chrono::steady_clock::time_point now) const;
  int64_t PinnedBlocks(int32_t tenant) const;
  int64_t size() const { return static_cast<int64_t>(pins_.size()); }

  template <typename Fn>
  void ForEach(Fn&& fn) const {
    for (const auto& [id, pin] : pins_) fn(pin);
  }

 private:
  PinId next_id_ = 1;
  std::map<PinId, PrefixPin> pins_;
  std::vector<int64_t> pinned_blocks_;  // by tenant index
};

}  // namespace kvpool::manager
