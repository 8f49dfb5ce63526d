// A worker's mapping of the KV pool the manager hosts in POSIX shared memory
// (cache_service/pool_host.h creates "/kvpool-<pid>-<random>"). Opens the segment by
// the name the manager's descriptor gives, checks that its size is what the geometry
// says (a worker whose model does not match the pool is refused here, before any byte
// is misread), and maps it shared. RAII, move-only: unmapping never unlinks (the
// segment is the manager's).
#pragma once

#include <string>

#include "common/kv_layout.h"
#include "common/status.h"

namespace kvpool {

class ShmPoolAttachment {
 public:
  static StatusOr<ShmPoolAttachment> Open(const std::string& shm_name,
                                          const PoolGeometry& geometry);

  ShmPoolAttachment(ShmPoolAttachment&& other) noexcept;
  ShmPoolAttachment& operator=(ShmPoolAttachment&& other) noexcept;
  ShmPoolAttachment(const ShmPoolAttachment&) = delete;
  ShmPoolAttachment& operator=(const ShmPoolAttachment&) = delete;
  ~ShmPoolAttachment();

  void* base() const { return base_; }
  const PoolGeometry& geometry() const { return geometry_; }

 private:
  ShmPoolAttachment() = default;
  void Reset();

  void* base_ = nullptr;
  PoolGeometry geometry_;
};

}  // namespace kvpool
