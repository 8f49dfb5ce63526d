// The KV pool memory as the engine sees it: one mapping laid out per
// common/kv_layout.h, and the in-process block allocator that hands out
// block ids for it. The worker issue swaps the allocator for manager calls and the
// anonymous mapping for the manager's shared memory; the layout stays.
//
// Invariant: a block id is either free (in free_ids_) or owned by exactly one
// caller of Allocate*; Free of an id that is not allocated is a programming error.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <vector>

#include "common/kv_layout.h"
#include "common/status.h"

namespace kvpool {

// Owns (or borrows) the pool bytes. Move-only.
class KvPool {
 public:
  // Maps anonymous, lazily zeroed memory for the geometry (pages cost RSS only when
  // written, so an unused tail of the pool costs nothing).
  static StatusOr<KvPool> Create(const PoolGeometry& geometry);
  // Memory that `owner` keeps alive (shared memory, a device allocation, an IPC
  // mapping); null `owner` borrows memory that outlives the pool.
  static KvPool Adopt(const PoolGeometry& geometry, void* base, std::shared_ptr<void> owner);

  KvPool(KvPool&&) noexcept = default;
  KvPool& operator=(KvPool&&) noexcept = default;
  KvPool(const KvPool&) = delete;
  KvPool& operator=(const KvPool&) = delete;

  const PoolGeometry& geometry() const { return geometry_; }
  void* base() const { return base_; }
  // One layer's K or V region (fp32 pools; device pools use RegionBytes).
  float* Region(int32_t layer, KvPart part) const {
    return static_cast<float*>(base_) + geometry_.region_offset(layer, part);
  }
  void* RegionBytes(int32_t layer, KvPart part) const {
    return static_cast<char*>(base_) +
           geometry_.region_offset(layer, part) * KvDtypeBytes(geometry_.dtype);
  }

 private:
  KvPool(const PoolGeometry& geometry, void* base, std::shared_ptr<void> owner)
      : geometry_(geometry), base_(base), owner_(std::move(owner)) {}
  PoolGeometry geometry_;
  void* base_ = nullptr;
  std::shared_ptr<void> owner_;
};

// First-fit allocator over block ids 0..num_blocks-1, kept ordered so that
// `contiguous` reservations find runs and `paged` takes the lowest ids.
class BlockAllocator {
 public:
  explicit BlockAllocator(int64_t num_blocks);

  // Any `n` free blocks (paged mode). RESOURCE_EXHAUSTED when fewer are free.
  StatusOr<std::vector<int32_t>> Allocate(int64_t n);
  // A run of `n` consecutive free blocks (contiguous mode), first fit.
  // RESOURCE_EXHAUSTED when no run is long enough, even if enough blocks are free.
  StatusOr<std::vector<int32_t>> AllocateContiguous(int64_t n);
  void Free(const std::vector<int32_t>& blocks);
  // Marks these free blocks as taken (FAILED_PRECONDITION if one is not free).
  Status Claim(const std::vector<int32_t>& blocks);

  int64_t num_blocks() const { return num_blocks_; }
  int64_t num_free() const { return static_cast<int64_t>(free_ids_.size()); }

 private:
  int64_t num_blocks_;
  std::set<int32_t> free_ids_;
};

}  // namespace kvpool
