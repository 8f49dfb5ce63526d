// KvPool: see kv_pool.h. Memory only; which sequence owns a block is the manager's.
#include "engine/kv_pool.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>

namespace kvpool {

StatusOr<KvPool> KvPool::Create(const PoolGeometry& geometry) {
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

}  // namespace kvpool
