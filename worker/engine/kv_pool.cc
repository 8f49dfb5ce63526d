// KvPool and the in-process BlockAllocator: see kv_pool.h. Memory and block ids only;
// which sequence owns a block is the engine's (or, in the worker, the manager's).
#include "engine/kv_pool.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace kvpool {

StatusOr<KvPool> KvPool::Create(const PoolGeometry& geometry) {
  if (geometry.dtype != KvDtype::kFloat32) {
    return InvalidArgument("the CPU engine keeps its KV pool in fp32");
  }
  const size_t bytes = geometry.pool_bytes();
  if (bytes == 0) return InvalidArgument("KV pool geometry has zero bytes");
  void* base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) {
    return ResourceExhausted("cannot map a KV pool of " + std::to_string(bytes) +
                             " bytes: " + std::strerror(errno));
  }
  return KvPool(geometry, base,
                std::shared_ptr<void>(base, [bytes](void* p) { munmap(p, bytes); }));
}

KvPool KvPool::Adopt(const PoolGeometry& geometry, void* base, std::shared_ptr<void> owner) {
  return KvPool(geometry, base, std::move(owner));
}

BlockAllocator::BlockAllocator(int64_t num_blocks) : num_blocks_(num_blocks) {
  for (int64_t i = 0; i < num_blocks; ++i)
    free_ids_.insert(free_ids_.end(), static_cast<int32_t>(i));
}

StatusOr<std::vector<int32_t>> BlockAllocator::Allocate(int64_t n) {
  if (n > num_free()) {
    return ResourceExhausted("KV pool exhausted: " + std::to_string(n) + " blocks needed, " +
                             std::to_string(num_free()) + " free of " +
                             std::to_string(num_blocks_));
  }
  std::vector<int32_t> out;
  out.reserve(n);
  for (int64_t i = 0; i < n; ++i) out.push_back(free_ids_.extract(free_ids_.begin()).value());
  return out;
}

StatusOr<std::vector<int32_t>> BlockAllocator::AllocateContiguous(int64_t n) {
  if (n <= 0) return std::vector<int32_t>{};
  int32_t run_start = -1;
  int64_t run_len = 0;
  int32_t prev = -2;
  for (int32_t id : free_ids_) {
    if (id == prev + 1 && run_len > 0) {
      ++run_len;
    } else {
      run_start = id;
      run_len = 1;
    }
    prev = id;
    if (run_len == n) {
      std::vector<int32_t> out;
      out.reserve(n);
      for (int32_t b = run_start; b < run_start + n; ++b) {
        free_ids_.erase(b);
        out.push_back(b);
      }
      return out;
    }
  }
  return ResourceExhausted("no run of " + std::to_string(n) + " consecutive free KV blocks (" +
                           std::to_string(num_free()) + " free of " + std::to_string(num_blocks_) +
                           " in total: fragmentation)");
}

Status BlockAllocator::Claim(const std::vector<int32_t>& blocks) {
  for (int32_t b : blocks) {
    if (free_ids_.count(b) == 0) {
      return FailedPrecondition("block " + std::to_string(b) + " is not free");
    }
  }
  for (int32_t b : blocks) free_ids_.erase(b);
  return Status::Ok();
}

void BlockAllocator::Free(const std::vector<int32_t>& blocks) {
  for (int32_t b : blocks) {
    if (b < 0 || b >= num_blocks_ || !free_ids_.insert(b).second) {
      throw std::logic_error("BlockAllocator::Free: block " + std::to_string(b) +
                             " is not allocated");
    }
  }
}

}  // namespace kvpool
