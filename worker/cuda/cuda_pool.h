// The worker's side of the KV pool on a GPU: CudaPoolAttachment owns one process's
// mapping of the pool the manager hosts (cache_service/cuda_pool_host.h: cudaMalloc +
// the 64-byte IPC handle): find the GPU by UUID, open the handle. Move-only; closes the
// mapping on destruction. It never reads or writes KV bytes; RegionPointer turns a
// pool base into one (layer, K|V) region base through kv_layout.h, which is what
// the kernels of cuda/paged_attention.h take.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/kv_layout.h"
#include "common/status.h"

namespace kvpool::gpu {

// The bytes of a cudaIpcMemHandle_t (CUDA_IPC_HANDLE_SIZE).
using IpcHandleBytes = std::array<uint8_t, 64>;

std::string IpcHandleToHex(const IpcHandleBytes& handle);
StatusOr<IpcHandleBytes> IpcHandleFromHex(std::string_view hex);

// "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", as nvidia-smi -L prints it.
StatusOr<std::string> GpuUuid(int device);
// The ordinal of the visible device with that UUID; NOT_FOUND (listing the UUIDs
// that are visible) when none has it.
StatusOr<int> FindDeviceByUuid(std::string_view uuid);

// Base of the (layer, part) region of a pool starting at `pool_base`.
inline void* RegionPointer(void* pool_base, const PoolGeometry& geometry, int32_t layer,
                           KvPart part) {
  return static_cast<char*>(pool_base) + geometry.region_byte_offset(layer, part);
}
inline const void* RegionPointer(const void* pool_base, const PoolGeometry& geometry, int32_t layer,
                                 KvPart part) {
  return RegionPointer(const_cast<void*>(pool_base), geometry, layer, part);
}

class CudaPoolAttachment {
 public:
  // Finds the device whose UUID is `gpu_uuid`, makes it current on the calling thread
  // and maps the pool (cudaIpcMemLazyEnablePeerAccess). `geometry` is what the
  // attach reply says the pool holds; CUDA cannot check it against the handle.
  // Fails in the process that created the allocation (a CUDA IPC rule).
  static StatusOr<CudaPoolAttachment> Open(const IpcHandleBytes& handle, std::string_view gpu_uuid,
                                           const PoolGeometry& geometry);

  CudaPoolAttachment(CudaPoolAttachment&& other) noexcept;
  CudaPoolAttachment& operator=(CudaPoolAttachment&& other) noexcept;
  CudaPoolAttachment(const CudaPoolAttachment&) = delete;
  CudaPoolAttachment& operator=(const CudaPoolAttachment&) = delete;
  ~CudaPoolAttachment();

  void* base() const { return base_; }
  size_t pool_bytes() const { return geometry_.pool_bytes(); }
  const PoolGeometry& geometry() const { return geometry_; }
  int device() const { return device_; }

 private:
  CudaPoolAttachment() = default;
  void Reset();

  void* base_ = nullptr;
  PoolGeometry geometry_;
  int device_ = -1;
};

}  // namespace kvpool::gpu
