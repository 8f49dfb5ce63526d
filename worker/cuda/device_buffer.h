// DeviceBuffer: one cudaMalloc'd range on one device, freed on destruction. It owns
// scratch memory (the decode workspace, test and benchmark buffers); it never owns
// the KV pool, which CudaPoolHost / CudaPoolAttachment own. Move-only.
#pragma once

#include <cstddef>

#include "common/status.h"

namespace kvpool::gpu {

class DeviceBuffer {
 public:
  // Allocates `bytes` (may be 0: then data() is null) on the current device.
  static StatusOr<DeviceBuffer> Allocate(size_t bytes);

  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  int device() const { return device_; }

 private:
  DeviceBuffer(void* data, size_t bytes, int device) : data_(data), bytes_(bytes), device_(device) {}
  void Reset();

  void* data_ = nullptr;
  size_t bytes_ = 0;
  int device_ = -1;
};

}  // namespace kvpool::gpu
