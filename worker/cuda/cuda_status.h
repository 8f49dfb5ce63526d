// CUDA errors as kvpool::Status values: the one place where a cudaError_t becomes
// an error a person can act on (the CUDA error name and string, plus what we were
// doing). Every CUDA call of this library goes through KVPOOL_CUDA_RETURN_IF_ERROR.
// common/status.h is header-only, so this library links no engine code (and no
// LibTorch).
#pragma once

#include <cuda_runtime_api.h>

#include <string>
#include <string_view>

#include "common/status.h"

namespace kvpool::gpu {

// Out of device memory maps to RESOURCE_EXHAUSTED, a missing device or driver to
// UNAVAILABLE, everything else to INTERNAL.
inline Status CudaErrorStatus(cudaError_t error, std::string_view what) {
  std::string message(what);
  message += ": ";
  message += cudaGetErrorName(error);
  message += " (";
  message += cudaGetErrorString(error);
  message += ")";
  switch (error) {
    case cudaErrorMemoryAllocation:
      return ResourceExhausted(std::move(message));
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
      return Status(StatusCode::kUnavailable, std::move(message));
    default:
      return Internal(std::move(message));
  }
}

}  // namespace kvpool::gpu

#define KVPOOL_CUDA_RETURN_IF_ERROR(call, what)                              \
  do {                                                                       \
    const cudaError_t _kv_cuda_error = (call);                               \
    if (_kv_cuda_error != cudaSuccess) {                                     \
      return ::kvpool::gpu::CudaErrorStatus(_kv_cuda_error, (what));         \
    }                                                                        \
  } while (0)
