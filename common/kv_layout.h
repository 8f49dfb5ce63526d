// The KV pool layout: the one contract, besides the gRPC API, that the manager
// (which hosts the memory) and the workers (which read and write it) share.
//
// The pool is one allocation. It holds one region per (layer, K|V), in the order
// layer 0 K, layer 0 V, layer 1 K, ... Each region is [num_blocks] blocks, and a block
// is [block_size][num_kv_heads][head_dim] elements of the pool dtype, followed, for the
// scaled dtypes (int8, fp8), by [block_size][num_kv_heads] fp32 scales: one per
// (token, KV head), so that a block and its scales move together (copy-on-write, swap)
// as one run of block_stride_bytes(). A block id indexes the same slot in every region;
// for the unscaled dtypes a run of consecutive block ids is one contiguous
// [tokens, num_kv_heads, head_dim] tensor per layer. This header must stay free of any
// library: both services include it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace kvpool {

// int8: symmetric, value = scale * q with q in [-127, 127] and scale = max|x| / 127 over
// the token's head (llama.cpp's q8_0 scales blocks of 32 elements; one scale per head
// costs 4 bytes per 64-128 elements, 3-6%, and keeps a head's dot product one sum).
// fp8: e4m3 (finite, max 448, as vLLM's fp8_e4m3) with the same per-(token, head) scale,
// max|x| / 448.
enum class KvDtype : uint8_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kInt8 = 3, kFp8E4m3 = 4 };

// ceil(a / b) for a >= 0, b > 0, without overflow (a may come from a request): e.g. the
// blocks that hold `a` tokens.
constexpr int64_t CeilDiv(int64_t a, int64_t b) { return a / b + (a % b != 0); }

constexpr size_t KvDtypeBytes(KvDtype dtype) {
  return dtype == KvDtype::kFloat32                              ? 4
         : dtype == KvDtype::kInt8 || dtype == KvDtype::kFp8E4m3 ? 1
                                                                 : 2;
}
// Whether the dtype carries a scale per (token, KV head).
constexpr bool KvDtypeScaled(KvDtype dtype) {
  return dtype == KvDtype::kInt8 || dtype == KvDtype::kFp8E4m3;
}
constexpr size_t kKvScaleBytes = 4;  // one fp32 scale

inline const char* KvDtypeName(KvDtype dtype) {
  switch (dtype) {
    case KvDtype::kFloat32:
      return "fp32";
    case KvDtype::kFloat16:
      return "fp16";
    case KvDtype::kBFloat16:
      return "bf16";
    case KvDtype::kInt8:
      return "int8";
    case KvDtype::kFp8E4m3:
      return "fp8";
  }
  return "?";
}

// The one parser of KV dtype names (flags of every tool): fp32, fp16, bf16, int8, fp8
// (also "fp8_e4m3", vLLM's name). False for anything else.
inline bool ParseKvDtype(const std::string& name, KvDtype* out) {
  static constexpr struct {
    const char* name;
    KvDtype dtype;
  } kNames[] = {{"fp32", KvDtype::kFloat32},  {"fp16", KvDtype::kFloat16},
                {"bf16", KvDtype::kBFloat16}, {"int8", KvDtype::kInt8},
                {"fp8", KvDtype::kFp8E4m3},   {"fp8_e4m3", KvDtype::kFp8E4m3}};
  for (const auto& n : kNames) {
    if (name == n.name) {
      *out = n.dtype;
      return true;
    }
  }
  return false;
}
constexpr const char* kKvDtypeNames = "fp32, fp16, bf16, int8 or fp8";

enum class KvPart : uint8_t { kKey = 0, kValue = 1 };

struct PoolGeometry {
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t block_size = 0;  // tokens per block
  int64_t num_blocks = 0;
  KvDtype dtype = KvDtype::kFloat32;

  // Elements of one token's K (or V) in one layer.
  constexpr int64_t token_elems() const { return int64_t{num_kv_heads} * head_dim; }
  // Elements of one block in one (layer, part) region.
  constexpr int64_t block_elems() const { return token_elems() * block_size; }
  // Bytes of one token's elements in a region (the token stride inside a block).
  constexpr int64_t token_stride_bytes() const {
    return token_elems() * static_cast<int64_t>(KvDtypeBytes(dtype));
  }
  // Scale bytes of one token in a region (0 for the unscaled dtypes).
  constexpr int64_t token_scale_bytes() const {
    return KvDtypeScaled(dtype) ? int64_t{num_kv_heads} * static_cast<int64_t>(kKvScaleBytes) : 0;
  }
  // Where a block's scales start, in bytes from the block's start.
  constexpr int64_t block_scales_offset() const { return token_stride_bytes() * block_size; }
  // Bytes of one block in one (layer, part) region, scales included: the block stride.
  constexpr int64_t block_stride_bytes() const {
    return (token_stride_bytes() + token_scale_bytes()) * block_size;
  }
  constexpr size_t region_bytes() const {
    return static_cast<size_t>(block_stride_bytes() * num_blocks);
  }
  constexpr size_t pool_bytes() const { return region_bytes() * 2 * num_layers; }
  // K and V bytes of one block across every layer: what one block id costs.
  constexpr size_t block_bytes() const {
    return static_cast<size_t>(block_stride_bytes()) * 2 * num_layers;
  }
  // K and V bytes of one token across every layer, scales included.
  constexpr size_t token_bytes() const {
    return static_cast<size_t>(token_stride_bytes() + token_scale_bytes()) * 2 * num_layers;
  }

  // Byte offset (from the pool base) of the start of a (layer, part) region.
  constexpr int64_t region_byte_offset(int32_t layer, KvPart part) const {
    return (int64_t{layer} * 2 + static_cast<int64_t>(part)) * static_cast<int64_t>(region_bytes());
  }
  // Element counts and offsets, for the unscaled dtypes only (a region is then a whole
  // number of elements): a region's elements, the start of a (layer, part) region, and
  // token slot `slot` of `block`.
  constexpr int64_t region_elems() const { return block_elems() * num_blocks; }
  constexpr int64_t region_offset(int32_t layer, KvPart part) const {
    return region_byte_offset(layer, part) / static_cast<int64_t>(KvDtypeBytes(dtype));
  }
  constexpr int64_t slot_offset(int32_t layer, KvPart part, int64_t block, int32_t slot) const {
    return region_offset(layer, part) + block * block_elems() + int64_t{slot} * token_elems();
  }

  bool operator==(const PoolGeometry& o) const {
    return num_layers == o.num_layers && num_kv_heads == o.num_kv_heads && head_dim == o.head_dim &&
           block_size == o.block_size && num_blocks == o.num_blocks && dtype == o.dtype;
  }
  bool operator!=(const PoolGeometry& o) const { return !(*this == o); }
};

}  // namespace kvpool
