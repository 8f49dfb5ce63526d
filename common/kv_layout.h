// The KV pool layout: the one contract, besides the gRPC API, that the manager
// (which hosts the memory) and the workers (which read and write it) share.
//
// The pool is one allocation. It holds one region per (layer, K|V), in the order
// layer 0 K, layer 0 V, layer 1 K, ... Each region is
//   [num_blocks][block_size][num_kv_heads][head_dim]
// of the pool dtype. A block id indexes the same slot in every region, so a run of
// consecutive block ids is one contiguous [tokens, num_kv_heads, head_dim] tensor per
// layer. This header must stay free of any library: both services include it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace kvpool {

enum class KvDtype : uint8_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// ceil(a / b) for a >= 0, b > 0, without overflow (a may come from a request): e.g. the
// blocks that hold `a` tokens.
constexpr int64_t CeilDiv(int64_t a, int64_t b) { return a / b + (a % b != 0); }

constexpr size_t KvDtypeBytes(KvDtype dtype) { return dtype == KvDtype::kFloat32 ? 4 : 2; }

inline const char* KvDtypeName(KvDtype dtype) {
  switch (dtype) {
    case KvDtype::kFloat32:
      return "fp32";
    case KvDtype::kFloat16:
      return "fp16";
    case KvDtype::kBFloat16:
      return "bf16";
  }
  return "?";
}

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
  constexpr int64_t region_elems() const { return block_elems() * num_blocks; }
  constexpr size_t region_bytes() const { return region_elems() * KvDtypeBytes(dtype); }
  constexpr size_t pool_bytes() const { return region_bytes() * 2 * num_layers; }
  // K and V bytes of one block across every layer: what one block id costs.
  constexpr size_t block_bytes() const {
    return block_elems() * KvDtypeBytes(dtype) * 2 * num_layers;
  }
  // K and V bytes of one token across every layer.
  constexpr size_t token_bytes() const {
    return token_elems() * KvDtypeBytes(dtype) * 2 * num_layers;
  }

  // Element offset (from the pool base) of the start of a (layer, part) region.
  constexpr int64_t region_offset(int32_t layer, KvPart part) const {
    return (int64_t{layer} * 2 + static_cast<int64_t>(part)) * region_elems();
  }
  // Element offset of token slot `slot` (0..block_size) of block `block`.
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
