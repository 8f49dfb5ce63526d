// PrefixIndex: the map from a full block's hash to the one block that holds it (vLLM's
// cached_block_hash_to_block). It owns only that map. It never changes a block's state
// or reference count: the block pool keeps the index and the blocks' hashes in step
// (a block has hash h exactly when the index maps h to it).
#pragma once

#include <cstdint>
#include <optional>
#include <unordered_map>

#include "cache_service/block_hash.h"

namespace kvpool::manager {

class PrefixIndex {
 public:
  // The block holding `hash`, if any.
  std::optional<int32_t> Lookup(const BlockHash& hash) const {
    auto it = map_.find(hash);
    if (it == map_.end()) return std::nullopt;
    return it->second;
  }
  // Maps `hash` to `block` unless some block holds it already; returns whether it did.
  bool Insert(const BlockHash& hash, int32_t block) { return map_.emplace(hash, block).second; }
  // Removes `hash`; returns whether it was there.
  bool Erase(const BlockHash& hash) { return map_.erase(hash) > 0; }
  int64_t size() const { return static_cast<int64_t>(map_.size()); }

  template <typename Fn>
  void ForEach(Fn&& fn) const {
    for (const auto& [hash, block] : map_) fn(hash, block);
  }

 private:
  std::unordered_map<BlockHash, int32_t, BlockHashHasher> map_;
};

}  // namespace kvpool::manager
