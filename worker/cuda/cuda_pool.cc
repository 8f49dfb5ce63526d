// CudaPoolAttachment: a worker's mapping of the manager's CUDA pool (see cuda_pool.h).
#include "cuda/cuda_pool.h"

#include <cuda_runtime_api.h>

#include <cstring>
#include <utility>

#include "cuda/cuda_status.h"
#include "common/gpu_uuid.h"

namespace kvpool::gpu {
namespace {

static_assert(sizeof(cudaIpcMemHandle_t) == std::tuple_size<IpcHandleBytes>::value,
              "IpcHandleBytes must hold a cudaIpcMemHandle_t");

// Runs `fn` with `device` current, then restores the caller's device (for destructors).
template <typename Fn>
void WithDevice(int device, Fn fn) {
  int previous = -1;
  const bool restore = cudaGetDevice(&previous) == cudaSuccess && previous != device;
  if (restore) cudaSetDevice(device);
  fn();
  if (restore) cudaSetDevice(previous);
}

}  // namespace

std::string IpcHandleToHex(const IpcHandleBytes& handle) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(handle.size() * 2);
  for (uint8_t b : handle) {
    hex.push_back(kDigits[b >> 4]);
    hex.push_back(kDigits[b & 15]);
  }
  return hex;
}

StatusOr<IpcHandleBytes> IpcHandleFromHex(std::string_view hex) {
  IpcHandleBytes handle{};
  if (hex.size() != handle.size() * 2) {
    return InvalidArgument("IPC handle: expected " + std::to_string(handle.size() * 2) +
                           " hex digits, got " + std::to_string(hex.size()));
  }
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < handle.size(); ++i) {
    const int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return InvalidArgument("IPC handle: not a hex string");
    handle[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return handle;
}

StatusOr<std::string> GpuUuid(int device) {
  cudaDeviceProp prop;
  KVPOOL_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device),
                              "cudaGetDeviceProperties(" + std::to_string(device) + ")");
  return FormatGpuUuid(reinterpret_cast<const unsigned char(&)[16]>(prop.uuid.bytes));
}

StatusOr<int> FindDeviceByUuid(std::string_view uuid) {
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  std::string seen;
  if (error != cudaSuccess) {
    count = 0;
    seen = std::string("none: ") + cudaGetErrorString(error);
  }
  for (int device = 0; device < count; ++device) {
    KVPOOL_ASSIGN_OR_RETURN(std::string candidate, GpuUuid(device));
    if (candidate == uuid) return device;
    seen += (seen.empty() ? "" : ", ") + candidate;
  }
  return NotFound("no visible CUDA device has UUID " + std::string(uuid) +
                  " (visible: " + (seen.empty() ? "none" : seen) + ")");
}

// ---- CudaPoolAttachment ----

StatusOr<CudaPoolAttachment> CudaPoolAttachment::Open(const IpcHandleBytes& handle,
                                                      std::string_view gpu_uuid,
                                                      const PoolGeometry& geometry) {
  KVPOOL_ASSIGN_OR_RETURN(const int device, FindDeviceByUuid(gpu_uuid));
  KVPOOL_CUDA_RETURN_IF_ERROR(cudaSetDevice(device),
                              "CudaPoolAttachment: cudaSetDevice(" + std::to_string(device) + ")");
  cudaIpcMemHandle_t ipc;
  std::memcpy(&ipc, handle.data(), sizeof(ipc));
  CudaPoolAttachment attachment;
  attachment.geometry_ = geometry;
  attachment.device_ = device;
  KVPOOL_CUDA_RETURN_IF_ERROR(
      cudaIpcOpenMemHandle(&attachment.base_, ipc, cudaIpcMemLazyEnablePeerAccess),
      "CudaPoolAttachment: cudaIpcOpenMemHandle on " + std::string(gpu_uuid));
  return attachment;
}

CudaPoolAttachment::CudaPoolAttachment(CudaPoolAttachment&& other) noexcept {
  *this = std::move(other);
}

CudaPoolAttachment& CudaPoolAttachment::operator=(CudaPoolAttachment&& other) noexcept {
  if (this != &other) {
    Reset();
    base_ = std::exchange(other.base_, nullptr);
    geometry_ = other.geometry_;
    device_ = std::exchange(other.device_, -1);
  }
  return *this;
}

CudaPoolAttachment::~CudaPoolAttachment() { Reset(); }

void CudaPoolAttachment::Reset() {
  if (base_ == nullptr) return;
  WithDevice(device_, [this] { cudaIpcCloseMemHandle(base_); });
  base_ = nullptr;
}

}  // namespace kvpool::gpu
