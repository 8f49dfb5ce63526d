// BlockPool: the state of every block id of the KV pool (after vLLM v1's block_pool.py
// and kv_cache_utils.py). It owns the blocks' reference counts, hashes and retention
// priorities, the free queues (free blocks; cached blocks by retention priority, least
// recently freed at the head of each) and the prefix index that maps hashes to cached
// blocks. Eviction takes free blocks first, then cached ones lowest retention priority
// first (TensorRT-LLM's 0-100 scale), least recently freed first within a priority.
// Allocation, touch and free are O(1) per block; only the contiguous first-fit scan is
// O(num_blocks). It never knows about sequences, workers, pins or tokens, and never
// touches KV bytes.
//
// Invariants (checked by CheckInvariants):
//   - a block is in a queue exactly when its ref_cnt is 0: the free queue when it has no
//     hash, else the cached queue of its retention priority;
//   - a block has a hash exactly when the prefix index maps that hash to it; the hash is
//     set once (CacheFullBlock) and cleared only when the block is evicted;
//   - free (no hash) + cached (hash, ref 0) + in use (ref >= 1) == num_blocks.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <vector>

#include "cache_service/block_hash.h"
#include "cache_service/prefix_index.h"
#include "common/status.h"

namespace kvpool::manager {

// Retention priorities: 0 (evicted first) .. 100 (evicted last); blocks nobody gave one
// have TensorRT-LLM's default.
inline constexpr int32_t kMinRetentionPriority = 0;
inline constexpr int32_t kMaxRetentionPriority = 100;
inline constexpr int32_t kDefaultRetentionPriority = 35;

struct KvBlock {
  int32_t block_id = 0;
  int32_t ref_cnt = 0;
  bool has_hash = false;
  uint8_t priority = kDefaultRetentionPriority;  // its cached queue when ref_cnt drops to 0
  int32_t tag = 0;  // the caller's note with the hash (the manager: its tenant's index)
  BlockHash hash;   // meaningful only when has_hash
  // Intrusive links of the free queue; both null when the block is not in it (or is its
  // only element: see in_free_queue).
  KvBlock* prev_free = nullptr;
  KvBlock* next_free = nullptr;
  bool in_free_queue = false;
};

// Intrusive doubly linked list of blocks with ref_cnt 0. O(1) pop at the head, insert at
// either end and removal from the middle (a prefix hit on a cached block). The pool
// keeps one for free blocks (freed ones at the head) and one per retention priority
// for cached blocks (freed ones at the tail: least recent first).
class FreeBlockQueue {
 public:
  int64_t size() const { return size_; }
  KvBlock* front() const { return head_; }
  KvBlock* PopFront();
  void Append(KvBlock* block);
  void PushFront(KvBlock* block);
  void Remove(KvBlock* block);

 private:
  KvBlock* head_ = nullptr;
  KvBlock* tail_ = nullptr;
  int64_t size_ = 0;
};

// Told of every eviction (a cached block's hash leaves the index), in order, with the
// tag the block was cached with. Called inside the pool's operation: must not call back.
class EvictionListener {
 public:
  virtual ~EvictionListener() = default;
  virtual void OnEvicted(const BlockHash& hash, int32_t tag) = 0;
};

class BlockPool {
 public:
  explicit BlockPool(int64_t num_blocks);
  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  int64_t num_blocks() const { return static_cast<int64_t>(blocks_.size()); }
  // Blocks that an allocation may take: free plus cached.
  int64_t num_allocatable() const { return free_.size() + num_cached_; }
  int64_t num_cached() const { return num_cached_; }
  int64_t num_free() const { return free_.size(); }
  int64_t num_in_use() const { return num_blocks() - num_allocatable(); }
  int64_t evictions() const { return evictions_; }
  const KvBlock& block(int32_t id) const { return blocks_[id]; }
  const PrefixIndex& prefix_index() const { return index_; }

  // Appends `n` blocks with ref_cnt 1 to `out`: free ones first, then cached ones,
  // evicted (their hash leaves the index) lowest priority first, least recently freed
  // first within one. RESOURCE_EXHAUSTED, with nothing taken, when fewer than `n` are
  // free or cached.
  Status Allocate(int64_t n, std::vector<int32_t>* out);
  // Appends the first (lowest-id) run of `n` consecutive blocks that all have ref_cnt 0
  // to `out`, evicting cached ones. RESOURCE_EXHAUSTED, nothing taken, when no run is
  // long enough, saying so when enough blocks are free in total (fragmentation).
  Status AllocateContiguous(int64_t n, std::vector<int32_t>* out);
  // ref_cnt++ on a block that already holds data (prefix hit, fork); a block at 0 leaves
  // the free queue (it stays cached: its hash is kept).
  void Touch(int32_t block);
  // ref_cnt--; at 0 the block joins the tail of its priority's cached queue if it has a
  // hash, else the head of the free queue. Callers free a sequence's blocks last first,
  // so its tail is evicted before its prefix.
  void Free(int32_t block);
  // The queue a block in use (ref_cnt >= 1) joins when it is freed: priority in
  // [kMinRetentionPriority, kMaxRetentionPriority]. The last holder to set it wins.
  void SetRetentionPriority(int32_t block, int32_t priority);
  // Cached blocks (hash, ref_cnt 0) by retention priority, for the statistics.
  int64_t num_cached_at(int32_t priority) const {
    return cached_[static_cast<size_t>(priority)].size();
  }
  // Evicts every cached block (ref_cnt 0): their hashes leave the index, each told to
  // the eviction listener; blocks in use keep theirs. Returns how many it evicted.
  int64_t EvictAllCached();
  // The block holding `hash`, if any.
  std::optional<int32_t> Lookup(const BlockHash& hash) const { return index_.Lookup(hash); }
  // Gives an in-use, full, committed block its hash (and `tag`) unless some block holds
  // that hash already (or this one has a hash); returns whether it did.
  bool CacheFullBlock(int32_t block, const BlockHash& hash, int32_t tag = 0);
  // null: nobody is told (the default).
  void set_eviction_listener(EvictionListener* listener) { eviction_listener_ = listener; }

  // The invariants above, plus ref_cnt == expected_ref_cnt[b] for every block. INTERNAL
  // naming the first violation.
  Status CheckInvariants(const std::vector<int32_t>& expected_ref_cnt) const;

 private:
  // Takes a block with ref_cnt 0 out of its queue for a new owner, evicting it if it is
  // cached.
  void TakeForAllocation(KvBlock* block);
  // The queue a block with ref_cnt 0 is in.
  FreeBlockQueue& QueueOf(const KvBlock& block) {
    return block.has_hash ? cached_[block.priority] : free_;
  }
  // Drops a cached block's hash (eviction), telling the listener.
  void Evict(KvBlock* block);
  // The next block an allocation takes; null when none is free or cached.
  KvBlock* NextVictim() const;

  std::vector<KvBlock> blocks_;
  FreeBlockQueue free_;                                           // no hash, ref_cnt 0
  std::array<FreeBlockQueue, kMaxRetentionPriority + 1> cached_;  // hash, ref_cnt 0, by priority
  PrefixIndex index_;
  int64_t num_cached_ = 0;  // blocks in the free queue with a hash
  int64_t evictions_ = 0;
  EvictionListener* eviction_listener_ = nullptr;
};

}  // namespace kvpool::manager
