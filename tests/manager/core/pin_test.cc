// Pins and retention priorities in CacheManager, on a tiny pool (12 blocks of 4 tokens)
// with exact expectations: a pinned prefix survives an eviction storm that evicts an
// unpinned one of the same age; eviction takes lower retention priority first, then
// LRU; the pinned-block cap refuses extra pins naming the cap; a tenant cannot pin or
// unpin another tenant's blocks; pins expire and drop to normal LRU; a re-pin renews;
// reset evicts every cached block and drops the pins.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "cache_service/cache_manager.h"

namespace kvpool::manager {
namespace {

using std::chrono::milliseconds;
using ::testing::HasSubstr;

constexpr int32_t kBlockSize = 4;
constexpr int64_t kNumBlocks = 12;

std::vector<int32_t> Iota(int32_t n, int32_t first) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), first);
  return v;
}

class PinTest : public ::testing::Test {
 protected:
  static CacheManagerOptions Options() {
    CacheManagerOptions o;
    o.geometry.num_layers = 1;
    o.geometry.num_kv_heads = 1;
    o.geometry.head_dim = 2;
    o.geometry.block_size = kBlockSize;
    o.geometry.num_blocks = kNumBlocks;
    o.lease_ttl = milliseconds(1000000);
    o.tenant_max_pinned_blocks = 4;
    return o;
  }
  void SetUp() override { worker_ = manager_.RegisterWorker(t0_).worker_id; }
  void TearDown() override {
    const Status s = manager_.CheckInvariants();
    EXPECT_TRUE(s.ok()) << s.ToString();
  }

  // Opens `prompt` (paged), commits all of it, closes it: its full blocks are cached.
  // Returns the cached tokens the open found.
  int64_t Serve(const std::vector<int32_t>& prompt, const std::string& tenant = "a",
                int32_t priority = -1) {
    OpenRequest open{worker_, tenant, prompt, KvMode::kPaged, 1};
    open.retention_priority = priority;
    auto r = manager_.OpenSequence(open, t0_);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (!r.ok()) return -1;
    std::vector<int32_t> rest(prompt.begin() + r->cached_tokens, prompt.end());
    auto step =
        manager_.Step(worker_, {{r->sequence_id, static_cast<int64_t>(prompt.size()), rest}}, t0_);
    EXPECT_TRUE(step.ok() && (*step)[0].status.ok());
    EXPECT_TRUE(manager_.CloseSequence(worker_, r->sequence_id, t0_).ok());
    return r->cached_tokens;
  }
  StatusOr<PinInfo> Pin(const std::vector<int32_t>& prompt, const std::string& tenant = "a",
                        milliseconds ttl = milliseconds(1000), int32_t priority = -1) {
    return manager_.PinPrefix({tenant, prompt, ttl, priority}, t0_);
  }
  // Fills the pool with `n` one-off prompts of 2 full blocks + 1 token each (3 blocks).
  void Storm(int n, int32_t first = 5000) {
    for (int i = 0; i < n; ++i) Serve(Iota(9, first + 100 * i), "storm");
  }

  Clock::time_point t0_{};
  CacheManager manager_{Options()};
  WorkerId worker_ = 0;
};

const std::vector<int32_t> kSystemA = Iota(9, 100);  // 2 full blocks + 1 token
const std::vector<int32_t> kSystemB = Iota(9, 200);

TEST_F(PinTest, PinnedPrefixSurvivesAStormThatEvictsAnUnpinnedOneOfTheSameAge) {
  Serve(kSystemA);
  Serve(kSystemB);
  const StatusOr<PinInfo> pin = Pin(kSystemA);
  ASSERT_TRUE(pin.ok()) << pin.status().ToString();
  EXPECT_EQ(pin->pinned_blocks, 2);
  EXPECT_EQ(pin->pinned_tokens, 8);
  EXPECT_EQ(pin->expires_in, milliseconds(1000));
  EXPECT_EQ(manager_.Stats().pinned_blocks, 2);
  Storm(6);                       // 18 blocks of one-off traffic through a 12-block pool
  EXPECT_EQ(Serve(kSystemA), 8);  // pinned: still cached
  EXPECT_EQ(Serve(kSystemB), 0);  // same age, unpinned: evicted
}

TEST_F(PinTest, EvictionTakesLowerPriorityFirstThenLeastRecent) {
  Serve(kSystemA, "a", 80);      // oldest, but kept longest
  Serve(kSystemB, "a");          // the default priority (35)
  Serve(Iota(9, 300), "a", 10);  // newest, but evicted first
  // 6 blocks cached, 6 free. Each one-off prompt takes 3 blocks and caches 2 (priority
  // 35): the third one evicts a block.
  Storm(3);
  ManagerStats stats = manager_.Stats();
  EXPECT_EQ(stats.evictions, 1);
  EXPECT_EQ(stats.cached_blocks_by_priority[10], 1);  // the newest prompt's tail went first
  Storm(1, 7000);  // two more: its other block, then the oldest block at priority 35
  stats = manager_.Stats();
  EXPECT_EQ(stats.evictions, 3);
  EXPECT_EQ(stats.cached_blocks_by_priority[10], 0);
  EXPECT_EQ(stats.cached_blocks_by_priority[80], 2);  // the oldest prompt is intact
  EXPECT_EQ(Serve(kSystemA), 8);
  EXPECT_EQ(Serve(kSystemB), 4);  // B's tail, older than the storm's blocks, went first
  OpenRequest bad{worker_, "a", kSystemA, KvMode::kPaged, 1};
  bad.retention_priority = 101;
  EXPECT_EQ(manager_.OpenSequence(bad, t0_).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(PinTest, TheCapRefusesAnExtraPinNamingTheCap) {
  Serve(kSystemA);
  Serve(kSystemB);
  Serve(Iota(9, 300));
  ASSERT_TRUE(Pin(kSystemA).ok());
  ASSERT_TRUE(Pin(kSystemB).ok());  // 4 of the 4-block cap
  const StatusOr<PinInfo> third = Pin(Iota(9, 300));
  EXPECT_EQ(third.status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(third.status().reason(), reason::kPinnedBlocksExceeded);
  EXPECT_THAT(third.status().message(), HasSubstr("pinned-block cap of 4"));
  // Pinning the same prompt again renews it instead of counting twice.
  const StatusOr<PinInfo> again = Pin(kSystemA, "a", milliseconds(5000), 90);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->expires_in, milliseconds(5000));
  EXPECT_EQ(manager_.ListPins("a", t0_).size(), 2u);
}

TEST_F(PinTest, ATenantCannotPinOrUnpinAnotherTenantsBlocks) {
  Serve(kSystemA, "a");
  // Tenant b's hashes are salted with its own name: a's blocks are not b's to find.
  EXPECT_EQ(Pin(kSystemA, "b").status().code(), StatusCode::kFailedPrecondition);
  const StatusOr<PinInfo> pin = Pin(kSystemA, "a");
  ASSERT_TRUE(pin.ok());
  EXPECT_EQ(manager_.Unpin("b", pin->pin_id, t0_).code(), StatusCode::kNotFound);
  EXPECT_TRUE(manager_.ListPins("b", t0_).empty());
  EXPECT_EQ(manager_.ListPins("a", t0_).size(), 1u);
  EXPECT_EQ(manager_.ListPins("", t0_).size(), 1u);  // the operator's view
  EXPECT_TRUE(manager_.Unpin("a", pin->pin_id, t0_).ok());
  EXPECT_EQ(manager_.Unpin("a", pin->pin_id, t0_).code(), StatusCode::kNotFound);
}

TEST_F(PinTest, PinsExpireAndTheirBlocksDropToLru) {
  Serve(kSystemA);
  ASSERT_TRUE(Pin(kSystemA, "a", milliseconds(500)).ok());
  EXPECT_EQ(manager_.ExpirePins(t0_ + milliseconds(499)), 0);
  EXPECT_EQ(manager_.ExpirePins(t0_ + milliseconds(500)), 1);
  EXPECT_TRUE(manager_.ListPins("a", t0_).empty());
  EXPECT_EQ(manager_.Stats().pinned_blocks, 0);
  EXPECT_EQ(manager_.Stats().cached_blocks, 2);  // still cached, now evictable
  Storm(6);  // 10 free blocks, then three evictions: the oldest cached, A's two first
  EXPECT_EQ(manager_.Stats().evictions, 3);
  EXPECT_EQ(Serve(kSystemA), 0);
}

TEST_F(PinTest, BadPinsAreRefusedWithReasons) {
  EXPECT_EQ(Pin(kSystemA).status().code(), StatusCode::kFailedPrecondition);  // nothing cached
  Serve(kSystemA);
  EXPECT_EQ(Pin(kSystemA, "a", milliseconds(0)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Pin(kSystemA, "a", milliseconds(86400001)).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(Pin(kSystemA, "a", milliseconds(10), 101).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(Pin(Iota(3, 100)).status().code(), StatusCode::kInvalidArgument);  // no full block
  EXPECT_EQ(Pin({1, 2, 3, -4, 5}).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(PinTest, ResetEvictsEveryCachedBlockAndDropsThePins) {
  Serve(kSystemA);
  Serve(kSystemB);
  ASSERT_TRUE(Pin(kSystemA).ok());
  // A running sequence's blocks keep their hashes.
  auto running = manager_.OpenSequence({worker_, "a", Iota(9, 400), KvMode::kPaged, 1}, t0_);
  ASSERT_TRUE(running.ok());
  ASSERT_TRUE(manager_.Step(worker_, {{running->sequence_id, 9, Iota(9, 400)}}, t0_).ok());
  const ResetResult reset = manager_.ResetPrefixCache(t0_);
  EXPECT_EQ(reset.dropped_pins, 1);
  EXPECT_EQ(reset.evicted_blocks, 4);
  EXPECT_EQ(manager_.Stats().cached_blocks, 0);
  EXPECT_TRUE(manager_.CloseSequence(worker_, running->sequence_id, t0_).ok());
  EXPECT_EQ(Serve(kSystemA), 0);
  EXPECT_EQ(Serve(Iota(9, 400)), 8);
}

}  // namespace
}  // namespace kvpool::manager
