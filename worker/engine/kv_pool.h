// The KV pool memory as the engine sees it: one mapping laid out per
// common/kv_layout.h (anonymous memory of the engine's own, the manager's shared
// memory, or a CUDA allocation or IPC mapping). It knows nothing of block ownership:
// block ids come from the cache manager's allocator only.
#pragma once

#include <cstdint>
#include <memory>
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
  // One layer's K or V region: its first byte (block 0's first token, for any dtype).
  void* RegionBytes(int32_t layer, KvPart part) const {
    return static_cast<char*>(base_) + geometry_.region_byte_offset(layer, part);
  }

 private:
  KvPool(const PoolGeometry& geometry, void* base, std::shared_ptr<void> owner)
      : geometry_(geometry), base_(base), owner_(std::move(owner)) {}
  PoolGeometry geometry_;
  void* base_ = nullptr;
  std::shared_ptr<void> owner_;
};

}  // namespace kvpool
