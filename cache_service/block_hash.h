// Block hashes for the prefix cache. Owns the canonical byte encoding of a full block
// (parent hash, token ids, extra keys) and the 128-bit keyed hash over it (SipHash-2-4
// with a 128-bit tag), plus the per-tenant salt that goes into the first block's extra
// keys so that different tenants never share blocks. It never decides which blocks get
// hashed or cached (the cache manager does) and never hashes a partial block.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kvpool::manager {

// A 128-bit block hash. Equal hashes are taken to mean equal content: with 128 bits,
// a collision among 2^40 blocks has probability ~2^-48.
struct BlockHash {
  uint64_t lo = 0;
  uint64_t hi = 0;
  bool operator==(const BlockHash& o) const { return lo == o.lo && hi == o.hi; }
  bool operator!=(const BlockHash& o) const { return !(*this == o); }
};

struct BlockHashHasher {
  size_t operator()(const BlockHash& h) const { return static_cast<size_t>(h.lo ^ (h.hi >> 1)); }
};

// SipHash-2-4 with a 128-bit tag (the reference algorithm; `lo` holds tag bytes 0..7
// little-endian, `hi` bytes 8..15).
BlockHash SipHash128(const void* data, size_t len, uint64_t k0, uint64_t k1);

// The salt of a tenant: a keyed hash of the tenant name under a key of its own, so it
// is unrelated to any block hash. The empty tenant has a salt too.
BlockHash TenantSalt(const std::string& tenant);

// H(parent, tokens, extra keys). The first block of a sequence has no parent and its
// extra keys are the tenant salt; later blocks have a parent and no extra keys.
BlockHash HashBlock(const BlockHash* parent, const int32_t* tokens, size_t num_tokens,
                    const BlockHash* extra_keys);

// Hashes full blocks [first_block, first_block + count) of `tokens`, chained from
// `parent` (nullptr when first_block is 0), appending them to `out`.
void HashFullBlocks(const BlockHash& salt, const std::vector<int32_t>& tokens, int32_t block_size,
                    size_t first_block, size_t count, std::vector<BlockHash>* out);

}  // namespace kvpool::manager
