// BlockPool and FreeBlockQueue: see block_pool.h. Every mutation keeps the free queue,
// the reference counts, the blocks' hashes and the prefix index in step; nothing here
// may allocate memory per block operation (the manager bench needs >= 1M
// allocate+free pairs per second).
#include "cache_service/block_pool.h"

#include <algorithm>
#include <cassert>
#include <string>

namespace kvpool::manager {

KvBlock* FreeBlockQueue::PopFront() {
  KvBlock* block = head_;
  if (block != nullptr) Remove(block);
  return block;
}

void FreeBlockQueue::Append(KvBlock* block) {
  assert(!block->in_free_queue);
  block->prev_free = tail_;
  block->next_free = nullptr;
  if (tail_ != nullptr) {
    tail_->next_free = block;
  } else {
    head_ = block;
  }
  tail_ = block;
  block->in_free_queue = true;
  ++size_;
}

void FreeBlockQueue::PushFront(KvBlock* block) {
  assert(!block->in_free_queue);
  block->prev_free = nullptr;
  block->next_free = head_;
  if (head_ != nullptr) {
    head_->prev_free = block;
  } else {
    tail_ = block;
  }
  head_ = block;
  block->in_free_queue = true;
  ++size_;
}

void FreeBlockQueue::Remove(KvBlock* block) {
  assert(block->in_free_queue);
  if (block->prev_free != nullptr) {
    block->prev_free->next_free = block->next_free;
  } else {
    head_ = block->next_free;
  }
  if (block->next_free != nullptr) {
    block->next_free->prev_free = block->prev_free;
  } else {
    tail_ = block->prev_free;
  }
  block->prev_free = block->next_free = nullptr;
  block->in_free_queue = false;
  --size_;
}

BlockPool::BlockPool(int64_t num_blocks) : blocks_(static_cast<size_t>(num_blocks)) {
  for (int64_t i = 0; i < num_blocks; ++i) {
    blocks_[i].block_id = static_cast<int32_t>(i);
    free_.Append(&blocks_[i]);
  }
}

void BlockPool::Evict(KvBlock* block) {
  index_.Erase(block->hash);
  if (eviction_listener_ != nullptr) eviction_listener_->OnEvicted(block->hash, block->tag);
  block->has_hash = false;
  block->hash = BlockHash{};
  --num_cached_;
  ++evictions_;
}

KvBlock* BlockPool::NextVictim() const {
  if (free_.size() > 0) return free_.front();
  for (const FreeBlockQueue& queue : cached_) {
    if (queue.size() > 0) return queue.front();
  }
  return nullptr;
}

void BlockPool::TakeForAllocation(KvBlock* block) {
  assert(block->ref_cnt == 0);
  QueueOf(*block).Remove(block);
  if (block->has_hash) Evict(block);
  block->ref_cnt = 1;
  block->priority = kDefaultRetentionPriority;
}

Status BlockPool::Allocate(int64_t n, std::vector<int32_t>* out) {
  if (n > num_allocatable()) {
    return ResourceExhausted("out of KV blocks: need " + std::to_string(n) + ", " +
                             std::to_string(num_allocatable()) + " free or cached of " +
                             std::to_string(num_blocks()));
  }
  for (int64_t i = 0; i < n; ++i) {
    KvBlock* block = NextVictim();
    TakeForAllocation(block);
    out->push_back(block->block_id);
  }
  return Status::Ok();
}

Status BlockPool::AllocateContiguous(int64_t n, std::vector<int32_t>* out) {
  if (n > num_allocatable()) {
    return ResourceExhausted("out of KV blocks: a contiguous reservation needs " +
                             std::to_string(n) + ", " + std::to_string(num_allocatable()) +
                             " free or cached of " + std::to_string(num_blocks()));
  }
  int64_t run_start = 0;
  int64_t run = 0;
  for (int64_t i = 0; i < num_blocks() && run < n; ++i) {
    if (blocks_[i].ref_cnt == 0) {
      if (run == 0) run_start = i;
      ++run;
    } else {
      run = 0;
    }
  }
  if (n <= 0) return InvalidArgument("a contiguous reservation needs at least one block");
  if (run < n) {
    return ResourceExhausted("external fragmentation: " + std::to_string(num_allocatable()) +
                             " blocks free in total but no run of " + std::to_string(n) +
                             " consecutive blocks for a contiguous reservation");
  }
  for (int64_t i = run_start; i < run_start + n; ++i) {
    TakeForAllocation(&blocks_[i]);
    out->push_back(static_cast<int32_t>(i));
  }
  return Status::Ok();
}

void BlockPool::Touch(int32_t id) {
  KvBlock& block = blocks_[id];
  if (block.ref_cnt == 0) {
    QueueOf(block).Remove(&block);
    if (block.has_hash) --num_cached_;
  }
  ++block.ref_cnt;
}

void BlockPool::Free(int32_t id) {
  KvBlock& block = blocks_[id];
  assert(block.ref_cnt > 0);
  if (--block.ref_cnt == 0) {
    // Cached blocks queue for eviction (least recent first); free ones are taken first.
    if (block.has_hash) {
      cached_[block.priority].Append(&block);
      ++num_cached_;
    } else {
      free_.PushFront(&block);
    }
  }
}

void BlockPool::SetRetentionPriority(int32_t id, int32_t priority) {
  KvBlock& block = blocks_[id];
  assert(block.ref_cnt > 0);
  block.priority =
      static_cast<uint8_t>(std::clamp(priority, kMinRetentionPriority, kMaxRetentionPriority));
}

int64_t BlockPool::EvictAllCached() {
  int64_t evicted = 0;
  for (FreeBlockQueue& queue : cached_) {
    while (KvBlock* block = queue.PopFront()) {
      Evict(block);
      free_.Append(block);
      ++evicted;
    }
  }
  return evicted;
}

bool BlockPool::CacheFullBlock(int32_t id, const BlockHash& hash, int32_t tag) {
  KvBlock& block = blocks_[id];
  assert(block.ref_cnt > 0);
  if (block.has_hash) return false;
  if (!index_.Insert(hash, id)) return false;
  block.has_hash = true;
  block.tag = tag;
  block.hash = hash;
  return true;
}

Status BlockPool::CheckInvariants(const std::vector<int32_t>& expected_ref_cnt) const {
  auto fail = [](const std::string& what) { return Internal("block pool invariant: " + what); };
  if (static_cast<int64_t>(expected_ref_cnt.size()) != num_blocks()) {
    return fail("expected refcounts for " + std::to_string(expected_ref_cnt.size()) +
                " blocks, pool has " + std::to_string(num_blocks()));
  }
  // Walk the queues: links consistent, no block twice (bounded by num_blocks), each
  // block in the queue its hash and priority say.
  int64_t walked = 0, walked_cached = 0;
  std::vector<char> seen(blocks_.size(), 0);
  auto walk = [&](const FreeBlockQueue& queue, bool cached, int32_t priority) -> Status {
    const KvBlock* prev = nullptr;
    int64_t length = 0;
    for (const KvBlock* b = queue.front(); b != nullptr; b = b->next_free) {
      const std::string id = std::to_string(b->block_id);
      if (walked >= num_blocks()) return fail("the free queues are longer than the pool (a cycle)");
      if (seen[b->block_id]) return fail("block " + id + " twice in the free queues");
      seen[b->block_id] = 1;
      if (b->prev_free != prev) return fail("broken prev link at block " + id);
      if (!b->in_free_queue) return fail("queued block " + id + " unmarked");
      if (b->ref_cnt != 0) {
        return fail("block " + id + " in a free queue with ref_cnt " + std::to_string(b->ref_cnt));
      }
      if (b->has_hash != cached || (cached && b->priority != priority)) {
        return fail("block " + id + " is in the wrong queue (hash " + std::to_string(b->has_hash) +
                    ", priority " + std::to_string(b->priority) + ")");
      }
      if (cached) ++walked_cached;
      prev = b;
      ++walked;
      ++length;
    }
    if (length != queue.size()) {
      return fail("a free queue's size is " + std::to_string(queue.size()) + " but " +
                  std::to_string(length) + " are linked");
    }
    return Status::Ok();
  };
  KVPOOL_RETURN_IF_ERROR(walk(free_, false, 0));
  for (int32_t p = 0; p <= kMaxRetentionPriority; ++p) {
    KVPOOL_RETURN_IF_ERROR(walk(cached_[static_cast<size_t>(p)], true, p));
  }
  if (walked_cached != num_cached_) {
    return fail("cached count " + std::to_string(num_cached_) + " but " +
                std::to_string(walked_cached) + " cached blocks queued");
  }
  int64_t in_use = 0, with_hash = 0;
  for (const KvBlock& b : blocks_) {
    const std::string id = std::to_string(b.block_id);
    if (b.ref_cnt < 0) return fail("block " + id + " has negative ref_cnt");
    if (b.ref_cnt != expected_ref_cnt[b.block_id]) {
      return fail("block " + id + " has ref_cnt " + std::to_string(b.ref_cnt) + " but " +
                  std::to_string(expected_ref_cnt[b.block_id]) + " references are held");
    }
    if ((b.ref_cnt == 0) != static_cast<bool>(seen[b.block_id]) ||
        b.in_free_queue != static_cast<bool>(seen[b.block_id])) {
      return fail("block " + id + " with ref_cnt " + std::to_string(b.ref_cnt) +
                  (seen[b.block_id] ? " is" : " is not") + " in the free queue");
    }
    if (b.ref_cnt > 0) ++in_use;
    if (b.has_hash) {
      ++with_hash;
      auto holder = index_.Lookup(b.hash);
      if (!holder || *holder != b.block_id)
        return fail("block " + id + "'s hash is not indexed to it");
    }
  }
  if (with_hash != index_.size()) {
    return fail("index has " + std::to_string(index_.size()) + " hashes but " +
                std::to_string(with_hash) + " blocks hold one");
  }
  if (num_free() + num_cached() + in_use != num_blocks()) {
    return fail("free + cached + in use != total");
  }
  return Status::Ok();
}

}  // namespace kvpool::manager
