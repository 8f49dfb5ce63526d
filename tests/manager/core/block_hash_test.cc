// Block hashes: SipHash-2-4-128 against the reference vectors, and the properties the
// prefix cache relies on (chaining, tenant salt, token order).
#include "cache_service/block_hash.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

namespace kvpool::manager {
namespace {

// Reference vectors (github.com/veorq/SipHash vectors.h, vectors_sip128): key 00..0f,
// message 00..(n-1).
BlockHash Reference(const uint8_t (&tag)[16]) {
  BlockHash h;
  for (int i = 7; i >= 0; --i) h.lo = (h.lo << 8) | tag[i];
  for (int i = 15; i >= 8; --i) h.hi = (h.hi << 8) | tag[i];
  return h;
}

BlockHash OfLength(size_t n) {
  std::vector<uint8_t> in(n);
  for (size_t i = 0; i < n; ++i) in[i] = static_cast<uint8_t>(i);
  return SipHash128(in.data(), n, 0x0706050403020100ULL, 0x0f0e0d0c0b0a0908ULL);
}

TEST(SipHash128Test, MatchesReferenceVectors) {
  constexpr uint8_t k0[16] = {0xa3, 0x81, 0x7f, 0x04, 0xba, 0x25, 0xa8, 0xe6,
                              0x6d, 0xf6, 0x72, 0x14, 0xc7, 0x55, 0x02, 0x93};
  constexpr uint8_t k1[16] = {0xda, 0x87, 0xc1, 0xd8, 0x6b, 0x99, 0xaf, 0x44,
                              0x34, 0x76, 0x59, 0x11, 0x9b, 0x22, 0xfc, 0x45};
  constexpr uint8_t k15[16] = {0x54, 0x93, 0xe9, 0x99, 0x33, 0xb0, 0xa8, 0x11,
                               0x7e, 0x08, 0xec, 0x0f, 0x97, 0xcf, 0xc3, 0xd9};
  constexpr uint8_t k63[16] = {0x51, 0x50, 0xd1, 0x77, 0x2f, 0x50, 0x83, 0x4a,
                               0x50, 0x3e, 0x06, 0x9a, 0x97, 0x3f, 0xbd, 0x7c};
  EXPECT_EQ(OfLength(0), Reference(k0));
  EXPECT_EQ(OfLength(1), Reference(k1));
  EXPECT_EQ(OfLength(15), Reference(k15));
  EXPECT_EQ(OfLength(63), Reference(k63));
}

TEST(BlockHashTest, ChainsParentTokensAndSalt) {
  const std::vector<int32_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8};
  const BlockHash salt_a = TenantSalt("a");
  const BlockHash salt_b = TenantSalt("b");
  std::vector<BlockHash> a, b;
  HashFullBlocks(salt_a, tokens, 4, 0, 2, &a);
  HashFullBlocks(salt_b, tokens, 4, 0, 2, &b);
  ASSERT_EQ(a.size(), 2u);
  EXPECT_NE(a[0], b[0]);  // salt in the first block
  EXPECT_NE(a[1], b[1]);  // and through the chain
  EXPECT_EQ(a[0], HashBlock(nullptr, tokens.data(), 4, &salt_a));
  EXPECT_EQ(a[1], HashBlock(&a[0], tokens.data() + 4, 4, nullptr));
  // Same tokens, different parent: different hash.
  EXPECT_NE(HashBlock(&a[0], tokens.data(), 4, nullptr),
            HashBlock(&b[0], tokens.data(), 4, nullptr));
  // Order of tokens matters.
  const std::vector<int32_t> swapped = {2, 1, 3, 4};
  EXPECT_NE(a[0], HashBlock(nullptr, swapped.data(), 4, &salt_a));
  // Deterministic; resuming the chain gives the same hashes.
  std::vector<BlockHash> resumed = {a[0]};
  HashFullBlocks(salt_a, tokens, 4, 1, 1, &resumed);
  EXPECT_EQ(resumed, a);
}

}  // namespace
}  // namespace kvpool::manager
