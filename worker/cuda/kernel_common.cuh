// Internal to the .cu files of this folder: 16-byte vector loads of pool rows and
// their conversion to fp32, fp32 -> storage conversion, and the host-side argument
// checks the attention launchers share. Not a public header (CUDA-only syntax).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "common/status.h"
#include "common/kv_layout.h"

namespace kvpool::gpu::detail {

// 16 bytes of T, unpacked to kElems floats.
template <typename T>
struct Pack;

template <>
struct Pack<float> {
  static constexpr int kElems = 4;
  __device__ __forceinline__ static void ToFloat(const uint4& u, float* f) {
    f[0] = __uint_as_float(u.x);
    f[1] = __uint_as_float(u.y);
    f[2] = __uint_as_float(u.z);
    f[3] = __uint_as_float(u.w);
  }
};

template <>
struct Pack<__half> {
  static constexpr int kElems = 8;
  __device__ __forceinline__ static void ToFloat(const uint4& u, float* f) {
    const uint32_t words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      __half2 h;
      memcpy(&h, &words[i], sizeof(h));
      const float2 x = __half22float2(h);
      f[2 * i] = x.x;
      f[2 * i + 1] = x.y;
    }
  }
};

template <>
struct Pack<__nv_bfloat16> {
  static constexpr int kElems = 8;
  __device__ __forceinline__ static void ToFloat(const uint4& u, float* f) {
    const uint32_t words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      __nv_bfloat162 h;
      memcpy(&h, &words[i], sizeof(h));
      const float2 x = __bfloat1622float2(h);
      f[2 * i] = x.x;
      f[2 * i + 1] = x.y;
    }
  }
};

__device__ __forceinline__ uint4 LoadPack(const void* p) {
  return __ldg(reinterpret_cast<const uint4*>(p));
}

template <typename T>
__device__ __forceinline__ T FromFloat(float x);
template <>
__device__ __forceinline__ float FromFloat<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half FromFloat<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

constexpr float kLog2e = 1.4426950408889634f;
constexpr unsigned kFullMask = 0xffffffffu;

// Host side: shared argument checks. Each returns INVALID_ARGUMENT naming the field.
inline bool IsPowerOfTwo(int64_t x) { return x > 0 && (x & (x - 1)) == 0; }
inline int Log2(int64_t x) {
  int n = 0;
  while ((int64_t{1} << n) < x) ++n;
  return n;
}
inline bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

inline Status CheckAttentionShape(const char* who, const PoolGeometry& g, int32_t num_heads,
                                  int32_t num_seqs, int32_t max_blocks_per_seq) {
  const std::string w = std::string(who) + ": ";
  if (g.dtype != KvDtype::kFloat32 && g.dtype != KvDtype::kFloat16 &&
      g.dtype != KvDtype::kBFloat16) {
    return InvalidArgument(w + "unsupported dtype " + std::to_string(int(g.dtype)) +
                           " (supported: fp32, fp16, bf16)");
  }
  if (g.head_dim != 64 && g.head_dim != 128) {
    return InvalidArgument(w + "unsupported head_dim " + std::to_string(g.head_dim) +
                           " (supported: 64, 128)");
  }
  if (!IsPowerOfTwo(g.block_size) || g.block_size > 256) {
    return InvalidArgument(w + "unsupported block_size " + std::to_string(g.block_size) +
                           " (supported: a power of two in [1, 256])");
  }
  if (g.num_kv_heads <= 0) {
    return InvalidArgument(w + "num_kv_heads must be positive, got " +
                           std::to_string(g.num_kv_heads));
  }
  if (num_heads <= 0 || num_heads % g.num_kv_heads != 0) {
    return InvalidArgument(w + "num_heads " + std::to_string(num_heads) +
                           " must be a positive multiple of num_kv_heads " +
                           std::to_string(g.num_kv_heads));
  }
  if (num_seqs < 0 || num_seqs > 65535) {
    return InvalidArgument(w + "num_seqs " + std::to_string(num_seqs) +
                           " out of range [0, 65535]");
  }
  if (max_blocks_per_seq <= 0) {
    return InvalidArgument(w + "max_blocks_per_seq must be positive, got " +
                           std::to_string(max_blocks_per_seq));
  }
  return Status::Ok();
}

inline Status CheckPointer(const char* who, const char* name, const void* p, bool need_align16) {
  if (p == nullptr) return InvalidArgument(std::string(who) + ": " + name + " is null");
  if (need_align16 && !Aligned16(p)) {
    return InvalidArgument(std::string(who) + ": " + name + " must be 16-byte aligned");
  }
  return Status::Ok();
}

}  // namespace kvpool::gpu::detail
