// CudaPoolHost: the KV pool on a GPU, hosted by the manager (the CUDA twin of the shm
// PoolHost): one cudaMalloc'd allocation of PoolGeometry::pool_bytes() on the chosen
// device, zeroed, exported through cudaIpcGetMemHandle so that worker processes map it
// (worker/cuda/cuda_pool.h's CudaPoolAttachment). It carries the GPU's UUID, which a
// worker uses to find the same physical device whatever its CUDA_VISIBLE_DEVICES. It
// never reads or writes KV bytes. Move-only; frees the memory on destruction.
// Built only where a CUDA toolkit is found; plain C++ header (no CUDA syntax).
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "common/kv_layout.h"
#include "common/status.h"

namespace kvpool::manager {

class CudaPoolHost {
 public:
  // The bytes of a cudaIpcMemHandle_t (CUDA_IPC_HANDLE_SIZE).
  using IpcHandle = std::array<uint8_t, 64>;

  // Makes `device` current on the calling thread, allocates, zeroes, exports.
  static StatusOr<CudaPoolHost> Create(int device, const PoolGeometry& geometry);

  CudaPoolHost(CudaPoolHost&& other) noexcept;
  CudaPoolHost& operator=(CudaPoolHost&& other) noexcept;
  CudaPoolHost(const CudaPoolHost&) = delete;
  CudaPoolHost& operator=(const CudaPoolHost&) = delete;
  ~CudaPoolHost();

  void* base() const { return base_; }
  size_t pool_bytes() const { return geometry_.pool_bytes(); }
  const PoolGeometry& geometry() const { return geometry_; }
  int device() const { return device_; }
  const std::string& gpu_uuid() const { return gpu_uuid_; }  // "GPU-xxxxxxxx-xxxx-..."
  const IpcHandle& ipc_handle() const { return ipc_handle_; }

 private:
  CudaPoolHost() = default;
  void Reset();

  void* base_ = nullptr;
  PoolGeometry geometry_;
  int device_ = -1;
  std::string gpu_uuid_;
  IpcHandle ipc_handle_{};
};

}  // namespace kvpool::manager
