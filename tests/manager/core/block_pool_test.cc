// BlockPool and FreeBlockQueue: allocation order, LRU eviction, touch, contiguous
// first fit and fragmentation, with exact block ids on a tiny pool.
#include "cache_service/block_pool.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

namespace kvpool::manager {
namespace {

using ::testing::Each;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr int64_t kNumBlocks = 8;

class BlockPoolTest : public ::testing::Test {
 protected:
  // Checks the pool against the references this test holds.
  void ExpectConsistent() {
    std::vector<int32_t> refs(kNumBlocks, 0);
    for (int32_t b : held_) ++refs[b];
    Status s = pool_.CheckInvariants(refs);
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
  std::vector<int32_t> Allocate(int64_t n) {
    std::vector<int32_t> out;
    Status s = pool_.Allocate(n, &out);
    EXPECT_TRUE(s.ok()) << s.ToString();
    held_.insert(held_.end(), out.begin(), out.end());
    return out;
  }
  void Free(int32_t b) {
    pool_.Free(b);
    held_.erase(std::find(held_.begin(), held_.end(), b));
  }
  static BlockHash Hash(uint64_t v) { return BlockHash{v, ~v}; }

  BlockPool pool_{kNumBlocks};
  std::vector<int32_t> held_;
};

// DESIGN: allocation pops the free list and evicts a cached block only when no free
// block is left.
TEST_F(BlockPoolTest, EvictsCachedBlocksOnlyWhenNoFreeBlockIsLeft) {
  EXPECT_THAT(Allocate(2), ElementsAre(0, 1));
  ASSERT_TRUE(pool_.CacheFullBlock(0, Hash(10)));
  Free(0);                                                        // cached, evictable
  Free(1);                                                        // free
  EXPECT_THAT(Allocate(kNumBlocks - 1), Each(::testing::Ne(0)));  // every free one first
  EXPECT_EQ(pool_.evictions(), 0);
  EXPECT_THAT(Allocate(1), ElementsAre(0));  // then the cached one, evicted
  EXPECT_EQ(pool_.evictions(), 1);
}

TEST_F(BlockPoolTest, AllocatesFreedBlocksFirstThenInIdOrder) {
  EXPECT_THAT(Allocate(3), ElementsAre(0, 1, 2));
  Free(1);
  Free(0);  // free (unhashed) blocks go to the head of the queue
  EXPECT_THAT(Allocate(5), ElementsAre(0, 1, 3, 4, 5));
  EXPECT_THAT(Allocate(2), ElementsAre(6, 7));
  EXPECT_EQ(pool_.num_in_use(), kNumBlocks);
  std::vector<int32_t> none;
  Status s = pool_.Allocate(1, &none);
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(none.empty());
  ExpectConsistent();
}

TEST_F(BlockPoolTest, EvictsLeastRecentlyFreedCachedBlockAndItsHash) {
  std::vector<int32_t> blocks = Allocate(kNumBlocks);  // 0..7, pool full
  ASSERT_TRUE(pool_.CacheFullBlock(2, Hash(2)));
  ASSERT_TRUE(pool_.CacheFullBlock(5, Hash(5)));
  EXPECT_FALSE(pool_.CacheFullBlock(6, Hash(5)));  // hash already held by block 5
  Free(5);
  Free(2);
  EXPECT_EQ(pool_.num_cached(), 2);
  EXPECT_EQ(pool_.num_free(), 0);
  ExpectConsistent();
  // Block 5 was freed first: it is evicted first, and its hash leaves the index.
  EXPECT_THAT(Allocate(1), ElementsAre(5));
  EXPECT_EQ(pool_.evictions(), 1);
  EXPECT_FALSE(pool_.Lookup(Hash(5)).has_value());
  EXPECT_EQ(pool_.Lookup(Hash(2)), 2);
  ExpectConsistent();
}

TEST_F(BlockPoolTest, TouchTakesCachedBlockOutOfTheQueue) {
  Allocate(2);
  ASSERT_TRUE(pool_.CacheFullBlock(0, Hash(7)));
  Free(0);
  EXPECT_EQ(pool_.num_cached(), 1);
  pool_.Touch(0);
  held_.push_back(0);
  EXPECT_EQ(pool_.num_cached(), 0);
  EXPECT_EQ(pool_.block(0).ref_cnt, 1);
  EXPECT_TRUE(pool_.block(0).has_hash);
  // The remaining 6 free blocks never include block 0.
  EXPECT_THAT(Allocate(6), ElementsAre(2, 3, 4, 5, 6, 7));
  ExpectConsistent();
}

TEST_F(BlockPoolTest, ContiguousFirstFitAndFragmentation) {
  std::vector<int32_t> blocks = Allocate(kNumBlocks);
  Free(1);
  Free(3);
  Free(4);
  Free(6);
  std::vector<int32_t> run;
  ASSERT_TRUE(pool_.AllocateContiguous(2, &run).ok());
  EXPECT_THAT(run, ElementsAre(3, 4));
  held_.insert(held_.end(), run.begin(), run.end());
  // Two blocks free (1 and 6) but not adjacent.
  std::vector<int32_t> none;
  Status s = pool_.AllocateContiguous(2, &none);
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("2 blocks free in total but no run of 2"));
  EXPECT_TRUE(none.empty());
  ExpectConsistent();
}

TEST_F(BlockPoolTest, ContiguousEvictsCachedBlocksInTheRun) {
  Allocate(3);
  ASSERT_TRUE(pool_.CacheFullBlock(1, Hash(1)));
  Free(2);
  Free(1);
  Free(0);
  std::vector<int32_t> run;
  ASSERT_TRUE(pool_.AllocateContiguous(4, &run).ok());
  EXPECT_THAT(run, ElementsAre(0, 1, 2, 3));
  held_.insert(held_.end(), run.begin(), run.end());
  EXPECT_EQ(pool_.evictions(), 1);
  EXPECT_FALSE(pool_.Lookup(Hash(1)).has_value());
  ExpectConsistent();
}

}  // namespace
}  // namespace kvpool::manager
