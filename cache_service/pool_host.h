// PoolHost: owns the memory of the KV pool the manager hosts. On the CPU backend it is
// one POSIX shared-memory segment named "/kvpool-<pid>-<random>", created exclusively
// with mode 0600, sized to PoolGeometry::pool_bytes() and mapped; workers attach by
// name. The handle is RAII and move-only: destroying it unmaps and unlinks the segment
// (clean shutdown). RemoveStaleSegments() unlinks segments whose creator process is
// gone (a manager that was SIGKILLed), so a restart does not leak /dev/shm: the host
// holds an open-file-description lock on its segment for its whole life, and a
// segment nobody holds that lock on is stale (pids are not, across PID namespaces). The host
// never interprets the bytes: the layout is kv_layout.h's, the bookkeeping is
// CacheManager's.
//
// On the CUDA backend (built wherever a CUDA toolkit is found) it holds a
// CudaPoolHost (cache_service/cuda_pool_host.h): device memory on the chosen GPU,
// exported with a CUDA IPC handle that workers open; the descriptor carries the
// handle and the GPU's UUID.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "common/kv_layout.h"
#include "common/status.h"

namespace kvpool::manager {

enum class PoolBackend { kShm, kCuda };

class CudaPoolHost;

class PoolHost {
 public:
  // Creates, sizes (reserving the pages: a /dev/shm too small fails here, not later
  // with SIGBUS in a worker) and maps a fresh zeroed pool.
  static StatusOr<PoolHost> Create(PoolBackend backend, const PoolGeometry& geometry,
                                   int cuda_device = 0);
  // Unlinks /dev/shm/kvpool-* segments whose host no longer lives; returns how many.
  static int RemoveStaleSegments();

  PoolHost(PoolHost&& other) noexcept;
  PoolHost& operator=(PoolHost&& other) noexcept;
  PoolHost(const PoolHost&) = delete;
  PoolHost& operator=(const PoolHost&) = delete;
  ~PoolHost();

  const std::string& backend_name() const { return backend_name_; }
  const std::string& shm_name() const { return shm_name_; }  // "/kvpool-..."
  void* data() const { return data_; }                       // a device pointer on the CUDA backend
  // CUDA backend: the cudaIpcMemHandle_t bytes and the GPU's UUID; empty otherwise.
  std::string cuda_ipc_handle() const;
  std::string gpu_uuid() const;
  size_t pool_bytes() const { return pool_bytes_; }

 private:
  PoolHost() = default;
  void Release();

  std::shared_ptr<CudaPoolHost> cuda_;  // CUDA backend only
  int lock_fd_ = -1;                    // shm backend: holds the liveness lock
  std::string backend_name_;
  std::string shm_name_;
  void* data_ = nullptr;
  size_t pool_bytes_ = 0;
};

}  // namespace kvpool::manager
