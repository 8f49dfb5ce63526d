// DeviceBuffer: RAII over cudaMalloc / cudaFree (see device_buffer.h).
#include "cuda/device_buffer.h"

#include <cuda_runtime_api.h>

#include <utility>

#include "cuda/cuda_status.h"

namespace kvpool::gpu {

StatusOr<DeviceBuffer> DeviceBuffer::Allocate(size_t bytes) {
  int device = -1;
  KVPOOL_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device), "DeviceBuffer: cudaGetDevice");
  if (bytes == 0) return DeviceBuffer(nullptr, 0, device);
  void* data = nullptr;
  KVPOOL_CUDA_RETURN_IF_ERROR(cudaMalloc(&data, bytes),
                              "DeviceBuffer: cudaMalloc of " + std::to_string(bytes) + " bytes");
  return DeviceBuffer(data, bytes, device);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)),
      device_(std::exchange(other.device_, -1)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    Reset();
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    device_ = std::exchange(other.device_, -1);
  }
  return *this;
}

DeviceBuffer::~DeviceBuffer() { Reset(); }

void DeviceBuffer::Reset() {
  if (data_ == nullptr) return;
  // cudaFree needs the owning device current; restore the caller's afterwards.
  int previous = -1;
  const bool restore = cudaGetDevice(&previous) == cudaSuccess && previous != device_;
  if (restore) cudaSetDevice(device_);
  cudaFree(data_);  // a destructor cannot report; a failure here means a dead context
  if (restore) cudaSetDevice(previous);
  data_ = nullptr;
  bytes_ = 0;
}

}  // namespace kvpool::gpu
