// CudaPoolHost: see cuda_pool_host.h. Only the CUDA runtime calls that create, zero and
// export the pool live here; the manager's bookkeeping never depends on where the pool is.
#include "cache_service/cuda_pool_host.h"

#include <cuda_runtime_api.h>

#include <cstring>
#include <utility>

#include "common/gpu_uuid.h"

namespace kvpool::manager {
namespace {

static_assert(sizeof(cudaIpcMemHandle_t) == std::tuple_size<CudaPoolHost::IpcHandle>::value,
              "IpcHandle must hold a cudaIpcMemHandle_t");

Status CudaError(cudaError_t error, const std::string& what) {
  std::string message = "CudaPoolHost: " + what + ": " + cudaGetErrorName(error) + " (" +
                        cudaGetErrorString(error) + ")";
  if (error == cudaErrorMemoryAllocation) return ResourceExhausted(std::move(message));
  if (error == cudaErrorNoDevice || error == cudaErrorInsufficientDriver) {
    return Status(StatusCode::kUnavailable, std::move(message));
  }
  return Internal(std::move(message));
}

#define KVPOOL_RETURN_IF_CUDA_ERROR(call, what)                \
  do {                                                         \
    const cudaError_t _error = (call);                         \
    if (_error != cudaSuccess) return CudaError(_error, what); \
  } while (0)

}  // namespace

StatusOr<CudaPoolHost> CudaPoolHost::Create(int device, const PoolGeometry& geometry) {
  if (geometry.pool_bytes() == 0) return InvalidArgument("CudaPoolHost: the pool has 0 bytes");
  KVPOOL_RETURN_IF_CUDA_ERROR(cudaSetDevice(device),
                              "cudaSetDevice(" + std::to_string(device) + ")");
  CudaPoolHost host;
  host.geometry_ = geometry;
  host.device_ = device;
  cudaDeviceProp prop;
  KVPOOL_RETURN_IF_CUDA_ERROR(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  host.gpu_uuid_ = FormatGpuUuid(reinterpret_cast<const unsigned char(&)[16]>(prop.uuid.bytes));
  KVPOOL_RETURN_IF_CUDA_ERROR(cudaMalloc(&host.base_, geometry.pool_bytes()),
                              "cudaMalloc of " + std::to_string(geometry.pool_bytes()) + " bytes");
  KVPOOL_RETURN_IF_CUDA_ERROR(cudaMemset(host.base_, 0, geometry.pool_bytes()), "cudaMemset");
  // cudaMemset is asynchronous: the pool is zero (and any error known) before a worker
  // can map it.
  KVPOOL_RETURN_IF_CUDA_ERROR(cudaDeviceSynchronize(), "cudaDeviceSynchronize after cudaMemset");
  cudaIpcMemHandle_t handle;
  KVPOOL_RETURN_IF_CUDA_ERROR(cudaIpcGetMemHandle(&handle, host.base_), "cudaIpcGetMemHandle");
  std::memcpy(host.ipc_handle_.data(), &handle, sizeof(handle));
  return host;
}

CudaPoolHost::CudaPoolHost(CudaPoolHost&& other) noexcept { *this = std::move(other); }

CudaPoolHost& CudaPoolHost::operator=(CudaPoolHost&& other) noexcept {
  if (this != &other) {
    Reset();
    base_ = std::exchange(other.base_, nullptr);
    geometry_ = other.geometry_;
    device_ = std::exchange(other.device_, -1);
    gpu_uuid_ = std::move(other.gpu_uuid_);
    ipc_handle_ = other.ipc_handle_;
  }
  return *this;
}

CudaPoolHost::~CudaPoolHost() { Reset(); }

void CudaPoolHost::Reset() {
  if (base_ == nullptr) return;
  int previous = -1;
  const bool restore = cudaGetDevice(&previous) == cudaSuccess && previous != device_;
  if (restore) cudaSetDevice(device_);
  cudaFree(base_);
  if (restore) cudaSetDevice(previous);
  base_ = nullptr;
}

}  // namespace kvpool::manager
