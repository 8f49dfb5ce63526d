// The decode GEMV kernels (see gemv.h): one warp per output row, 16-byte loads, up to
// 8 input rows kept in registers, fused bias and activation epilogues. Launch
// configuration and argument checks are here; the weights' layout is the engine's.
#include <string>

#include "cuda/cuda_status.h"
#include "cuda/gemv.h"
#include "cuda/kernel_common.cuh"

namespace kvpool::gpu {
namespace {

constexpr int kWarpsPerBlock = 8;

template <typename T>
__device__ __forceinline__ float ToFloat(T v);
template <>
__device__ __forceinline__ float ToFloat<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ float ToFloat<__half>(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float ToFloat<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T, int kRows>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    GemvKernel(const T* __restrict__ w, const T* __restrict__ x, const T* __restrict__ bias,
               const T* __restrict__ residual, T* __restrict__ y, int n, int k, bool gelu) {
  using P = detail::Pack<T>;
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= n) return;
  float acc[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) acc[r] = 0.f;
  const T* w_row = w + static_cast<int64_t>(row) * k;
  // Four 16-byte loads of the row in flight per lane before any arithmetic: with one
  // at a time a long row (k = 3072) waits out memory latency a dozen times over.
  constexpr int kChunk = 32 * P::kElems;
  constexpr int kInFlight = 4;
  for (int base = lane * P::kElems; base < k; base += kInFlight * kChunk) {
    uint4 wv[kInFlight];
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      const int i = base + u * kChunk;
      wv[u] = i < k ? detail::LoadPack(w_row + i) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      const int i = base + u * kChunk;
      if (i >= k) break;
      float wf[P::kElems];
      P::ToFloat(wv[u], wf);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        float xf[P::kElems];
        P::ToFloat(detail::LoadPack(x + static_cast<int64_t>(r) * k + i), xf);
#pragma unroll
        for (int j = 0; j < P::kElems; ++j) acc[r] = fmaf(wf[j], xf[j], acc[r]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int off = 16; off > 0; off /= 2) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], off);
  }
  if (lane != 0) return;
  const float b = bias != nullptr ? ToFloat(bias[row]) : 0.f;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    float v = acc[r] + b;
    if (gelu) v = 0.5f * v * (1.f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    if (residual != nullptr) v += ToFloat(residual[static_cast<int64_t>(r) * n + row]);
    y[static_cast<int64_t>(r) * n + row] = detail::FromFloat<T>(v);
  }
}

template <typename T, int kRows>
void Launch(const GemvParams& p, cudaStream_t stream) {
  const int blocks = (p.n + kWarpsPerBlock - 1) / kWarpsPerBlock;
  GemvKernel<T, kRows><<<blocks, kWarpsPerBlock * 32, 0, stream>>>(
      static_cast<const T*>(p.w), static_cast<const T*>(p.x), static_cast<const T*>(p.bias),
      static_cast<const T*>(p.residual), static_cast<T*>(p.y), p.n, p.k, p.gelu_tanh);
}

template <typename T>
void LaunchRows(const GemvParams& p, cudaStream_t stream) {
  switch (p.m) {
    case 1:
      return Launch<T, 1>(p, stream);
    case 2:
      return Launch<T, 2>(p, stream);
    case 3:
      return Launch<T, 3>(p, stream);
    case 4:
      return Launch<T, 4>(p, stream);
    case 5:
      return Launch<T, 5>(p, stream);
    case 6:
      return Launch<T, 6>(p, stream);
    case 7:
      return Launch<T, 7>(p, stream);
    default:
      return Launch<T, 8>(p, stream);
  }
}

}  // namespace

Status Gemv(const GemvParams& p, cudaStream_t stream) {
  const std::string who = "Gemv";
  if (p.m < 1 || p.m > kGemvMaxRows) {
    return InvalidArgument(who + ": m must be in [1, 8], got " + std::to_string(p.m));
  }
  if (p.n <= 0 || p.k <= 0) return InvalidArgument(who + ": n and k must be positive");
  const int64_t elems_per_16b = 16 / static_cast<int64_t>(KvDtypeBytes(p.dtype));
  if (p.k % elems_per_16b != 0) {
    return InvalidArgument(who + ": k (" + std::to_string(p.k) + ") must be a multiple of " +
                           std::to_string(elems_per_16b) + " for " + KvDtypeName(p.dtype));
  }
  if (p.w == nullptr || p.x == nullptr || p.y == nullptr) {
    return InvalidArgument(who + ": w, x and y must be set");
  }
  if (!detail::Aligned16(p.w) || !detail::Aligned16(p.x)) {
    return InvalidArgument(who + ": w and x must be 16-byte aligned");
  }
  if (p.residual != nullptr && p.residual == p.y) {
    return InvalidArgument(who + ": residual may not alias y");
  }
  switch (p.dtype) {
    case KvDtype::kFloat32:
      LaunchRows<float>(p, stream);
      break;
    case KvDtype::kFloat16:
      LaunchRows<__half>(p, stream);
      break;
    case KvDtype::kBFloat16:
      LaunchRows<__nv_bfloat16>(p, stream);
      break;
    case KvDtype::kInt8:
    case KvDtype::kFp8E4m3:
      return InvalidArgument(who + ": weights are fp32, fp16 or bf16, not " + KvDtypeName(p.dtype));
  }
  KVPOOL_CUDA_RETURN_IF_ERROR(cudaGetLastError(), "Gemv: kernel launch");
  return Status::Ok();
}

}  // namespace kvpool::gpu
