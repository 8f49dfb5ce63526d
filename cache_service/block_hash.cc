// SipHash-2-4 (128-bit tag) and the canonical encoding of a block for the prefix cache.
// See block_hash.h. Never changes the encoding without changing every stored hash: the
// hashes live only in one manager process, so a restart is enough.
#include "cache_service/block_hash.h"

#include <cassert>
#include <cstring>

namespace kvpool::manager {
namespace {

// Fixed keys: the hashes never leave the manager, so secrecy is not the point; keyed
// SipHash is used for its quality as a 128-bit hash.
constexpr uint64_t kBlockKey0 = 0x6b76706f6f6c2d62ULL;  // "kvpool-b"
constexpr uint64_t kBlockKey1 = 0x6c6f636b2d686173ULL;  // "lock-has"
constexpr uint64_t kSaltKey0 = 0x6b76706f6f6c2d73ULL;   // "kvpool-s"
constexpr uint64_t kSaltKey1 = 0x616c742d74656e61ULL;   // "alt-tena"

inline uint64_t Rotl(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }

inline uint64_t LoadLe64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

struct SipState {
  uint64_t v0, v1, v2, v3;
  void Round() {
    v0 += v1;
    v1 = Rotl(v1, 13);
    v1 ^= v0;
    v0 = Rotl(v0, 32);
    v2 += v3;
    v3 = Rotl(v3, 16);
    v3 ^= v2;
    v0 += v3;
    v3 = Rotl(v3, 21);
    v3 ^= v0;
    v2 += v1;
    v1 = Rotl(v1, 17);
    v1 ^= v2;
    v2 = Rotl(v2, 32);
  }
};

void AppendLe(std::vector<uint8_t>* buf, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) buf->push_back(static_cast<uint8_t>(v >> (8 * i)));
}

}  // namespace

BlockHash SipHash128(const void* data, size_t len, uint64_t k0, uint64_t k1) {
  const auto* in = static_cast<const uint8_t*>(data);
  SipState s{k0 ^ 0x736f6d6570736575ULL, k1 ^ 0x646f72616e646f6dULL, k0 ^ 0x6c7967656e657261ULL,
             k1 ^ 0x7465646279746573ULL};
  s.v1 ^= 0xee;
  const size_t full = len - (len % 8);
  for (size_t i = 0; i < full; i += 8) {
    const uint64_t m = LoadLe64(in + i);
    s.v3 ^= m;
    s.Round();
    s.Round();
    s.v0 ^= m;
  }
  uint64_t b = static_cast<uint64_t>(len) << 56;
  for (size_t i = 0; i < len % 8; ++i) b |= static_cast<uint64_t>(in[full + i]) << (8 * i);
  s.v3 ^= b;
  s.Round();
  s.Round();
  s.v0 ^= b;
  s.v2 ^= 0xee;
  for (int i = 0; i < 4; ++i) s.Round();
  BlockHash h;
  h.lo = s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
  s.v1 ^= 0xdd;
  for (int i = 0; i < 4; ++i) s.Round();
  h.hi = s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
  return h;
}

BlockHash TenantSalt(const std::string& tenant) {
  return SipHash128(tenant.data(), tenant.size(), kSaltKey0, kSaltKey1);
}

// Encoding: u8 has_parent, [parent lo, hi as LE u64], u32 num_tokens, tokens as LE u32,
// u8 has_extra, [extra lo, hi]. Every field has a fixed width or a length prefix, so
// two different (parent, tokens, extra) never encode to the same bytes.
BlockHash HashBlock(const BlockHash* parent, const int32_t* tokens, size_t num_tokens,
                    const BlockHash* extra_keys) {
  std::vector<uint8_t> buf;
  buf.reserve(1 + 16 + 4 + 4 * num_tokens + 1 + 16);
  buf.push_back(parent != nullptr ? 1 : 0);
  if (parent != nullptr) {
    AppendLe(&buf, parent->lo, 8);
    AppendLe(&buf, parent->hi, 8);
  }
  AppendLe(&buf, num_tokens, 4);
  for (size_t i = 0; i < num_tokens; ++i) AppendLe(&buf, static_cast<uint32_t>(tokens[i]), 4);
  buf.push_back(extra_keys != nullptr ? 1 : 0);
  if (extra_keys != nullptr) {
    AppendLe(&buf, extra_keys->lo, 8);
    AppendLe(&buf, extra_keys->hi, 8);
  }
  return SipHash128(buf.data(), buf.size(), kBlockKey0, kBlockKey1);
}

void HashFullBlocks(const BlockHash& salt, const std::vector<int32_t>& tokens, int32_t block_size,
                    size_t first_block, size_t count, std::vector<BlockHash>* out) {
  assert(out->size() == first_block);
  assert((first_block + count) * block_size <= tokens.size());
  for (size_t i = first_block; i < first_block + count; ++i) {
    const int32_t* block_tokens = tokens.data() + i * block_size;
    if (i == 0) {
      out->push_back(HashBlock(nullptr, block_tokens, block_size, &salt));
    } else {
      const BlockHash parent = (*out)[i - 1];
      out->push_back(HashBlock(&parent, block_tokens, block_size, nullptr));
    }
  }
}

}  // namespace kvpool::manager
