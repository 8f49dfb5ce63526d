// One K or V head vector of one token, to and from the pool's element types
// (common/kv_layout.h): fp32 as is, fp16 and bf16 rounded to nearest even, int8 and
// fp8 (e4m3) scaled by max|x| over the head vector so that the largest element maps to
// 127 (int8) or 448 (the largest finite e4m3). Scalar code: a decode step writes one
// token per sequence and layer, so the write is never the bottleneck; the attention
// kernel has its own vector loads of the same encodings (paged_attention_cpu.cc), and
// the unit tests hold both to these functions.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/kv_layout.h"

namespace kvpool {

// e4m3 (1 sign, 4 exponent bits with bias 7, 3 mantissa bits; no infinities, 0x7f is
// NaN) of a finite float, rounded to nearest even and saturated at +-448.
inline uint8_t EncodeFp8E4m3(float x) {
  const uint8_t sign = std::signbit(x) ? 0x80 : 0;
  const float a = std::fabs(x);
  if (!(a < 448.f)) return sign | 0x7e;
  if (a < 0.015625f) {  // below 2^-6: subnormal, m x 2^-9 (m = 8 is 2^-6, code 0x08)
    return sign | static_cast<uint8_t>(std::nearbyint(a * 512.f));
  }
  uint32_t bits;
  std::memcpy(&bits, &a, sizeof(bits));
  bits += 0x7ffff + ((bits >> 20) & 1);  // round the 20 dropped mantissa bits to even
  const int32_t exponent = static_cast<int32_t>(bits >> 23) - 127 + 7;
  const uint32_t code =
      std::min<uint32_t>(static_cast<uint32_t>(exponent) << 3 | ((bits >> 20) & 7), 0x7e);
  return sign | static_cast<uint8_t>(code);
}

// The float an e4m3 code stands for: the 7 magnitude bits placed at fp32's exponent
// and mantissa fields, times 2^(127 - 7) to rebias; subnormals come out right too.
inline float DecodeFp8E4m3(uint8_t code) {
  const uint32_t bits =
      static_cast<uint32_t>(code & 0x7f) << 20 | static_cast<uint32_t>(code & 0x80) << 24;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f * 1.329227995784916e36f;  // 2^120
}

// Writes n elements of x as `dtype` at dst; for the scaled dtypes, also the scale at
// *scale (unaligned is fine).
inline void EncodeKvHead(const float* x, int32_t n, KvDtype dtype, void* dst, void* scale) {
  switch (dtype) {
    case KvDtype::kFloat32:
      std::memcpy(dst, x, sizeof(float) * n);
      return;
    case KvDtype::kFloat16: {
      auto* out = static_cast<c10::Half*>(dst);
      for (int32_t i = 0; i < n; ++i) out[i] = c10::Half(x[i]);
      return;
    }
    case KvDtype::kBFloat16: {
      auto* out = static_cast<c10::BFloat16*>(dst);
      for (int32_t i = 0; i < n; ++i) out[i] = c10::BFloat16(x[i]);
      return;
    }
    case KvDtype::kInt8:
    case KvDtype::kFp8E4m3: {
      float amax = 0.f;
      for (int32_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
      const bool int8 = dtype == KvDtype::kInt8;
      const float s = amax / (int8 ? 127.f : 448.f);
      const float inv = s > 0.f ? 1.f / s : 0.f;
      auto* out = static_cast<uint8_t*>(dst);
      for (int32_t i = 0; i < n; ++i) {
        const float v = x[i] * inv;
        out[i] = int8 ? static_cast<uint8_t>(
                            static_cast<int8_t>(std::clamp(std::nearbyint(v), -127.f, 127.f)))
                      : EncodeFp8E4m3(v);
      }
      std::memcpy(scale, &s, sizeof(s));
      return;
    }
  }
}

// Element i of a head vector stored as `dtype` (without its scale).
inline float DecodeKvElement(const void* src, int64_t i, KvDtype dtype) {
  switch (dtype) {
    case KvDtype::kFloat32:
      return static_cast<const float*>(src)[i];
    case KvDtype::kFloat16:
      return static_cast<float>(static_cast<const c10::Half*>(src)[i]);
    case KvDtype::kBFloat16:
      return static_cast<float>(static_cast<const c10::BFloat16*>(src)[i]);
    case KvDtype::kInt8:
      return static_cast<float>(static_cast<const int8_t*>(src)[i]);
    case KvDtype::kFp8E4m3:
      return DecodeFp8E4m3(static_cast<const uint8_t*>(src)[i]);
  }
  return 0.f;
}

// Token slot `slot` of `block` in a region (a byte pointer from KvPool::RegionBytes):
// the head vector of KV head `head`, and its scale (1 for the unscaled dtypes).
inline const char* KvHeadPointer(const void* region, const PoolGeometry& g, int64_t block,
                                 int32_t slot, int32_t head) {
  return static_cast<const char*>(region) + block * g.block_stride_bytes() +
         slot * g.token_stride_bytes() +
         int64_t{head} * g.head_dim * static_cast<int64_t>(KvDtypeBytes(g.dtype));
}
inline const char* KvScalePointer(const void* region, const PoolGeometry& g, int64_t block,
                                  int32_t slot, int32_t head) {
  return static_cast<const char*>(region) + block * g.block_stride_bytes() +
         g.block_scales_offset() + (int64_t{slot} * g.num_kv_heads + head) * 4;
}
inline float KvScale(const void* region, const PoolGeometry& g, int64_t block, int32_t slot,
                     int32_t head) {
  if (!KvDtypeScaled(g.dtype)) return 1.f;
  float s;
  std::memcpy(&s, KvScalePointer(region, g, block, slot, head), sizeof(s));
  return s;
}

}  // namespace kvpool
