// CacheManager unit tests on a tiny pool (8 blocks of 4 tokens) with exact block tables,
// in the style of TRT-LLM's kvCacheManagerTest: prefix hits and the one-token cap, salt
// isolation, LRU eviction, contiguous fragmentation, fork copy-on-write, leases, errors.
#include "cache_service/cache_manager.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

namespace kvpool::manager {
namespace {

using std::chrono::milliseconds;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr int32_t kBlockSize = 4;
constexpr int64_t kNumBlocks = 8;

constexpr PoolGeometry TinyGeometry() {
  PoolGeometry g;
  g.num_layers = 1;
  g.num_kv_heads = 1;
  g.head_dim = 2;
  g.block_size = kBlockSize;
  g.num_blocks = kNumBlocks;
  return g;
}

std::vector<int32_t> Iota(int32_t n, int32_t first = 100) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), first);
  return v;
}

class CacheManagerTest : public ::testing::Test {
 protected:
  static CacheManagerOptions Options() {
    CacheManagerOptions o;
    o.geometry = TinyGeometry();
    o.lease_ttl = milliseconds(1000);
    o.max_tokens_per_call = 64;
    o.max_sequences_per_worker = 16;
    o.max_context_tokens = 32;
    return o;
  }

  void SetUp() override { worker_ = manager_.RegisterWorker(t0_).worker_id; }
  void TearDown() override {
    Status s = manager_.CheckInvariants();
    EXPECT_TRUE(s.ok()) << s.ToString();
  }

  OpenResult Open(const std::vector<int32_t>& prompt, const std::string& tenant = "t",
                  KvMode mode = KvMode::kPaged, int64_t max_tokens = 4) {
    auto r = manager_.OpenSequence({worker_, tenant, prompt, mode, max_tokens}, t0_);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : OpenResult{};
  }
  // Commits `tokens` for `sequence` (slots: all committed so far).
  StepItemResult Commit(SequenceId sequence, int64_t num_tokens, std::vector<int32_t> tokens) {
    auto r = manager_.Step(worker_, {{sequence, num_tokens, std::move(tokens)}}, t0_);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? (*r)[0] : StepItemResult{};
  }
  // Opens `prompt` and commits all of it.
  OpenResult OpenAndCommit(const std::vector<int32_t>& prompt, const std::string& tenant = "t") {
    OpenResult r = Open(prompt, tenant);
    std::vector<int32_t> rest(prompt.begin() + r.cached_tokens, prompt.end());
    EXPECT_TRUE(Commit(r.sequence_id, prompt.size(), rest).status.ok());
    return r;
  }
  void ExpectInvariants() {
    Status s = manager_.CheckInvariants();
    EXPECT_TRUE(s.ok()) << s.ToString();
  }

  Clock::time_point t0_{};
  CacheManager manager_{Options()};
  WorkerId worker_ = 0;
};

TEST_F(CacheManagerTest, PrefixMissThenFullAndPartialHits) {
  const std::vector<int32_t> prompt = Iota(10);  // 2 full blocks + 2 tokens
  OpenResult first = OpenAndCommit(prompt);
  EXPECT_THAT(first.block_table, ElementsAre(0, 1, 2));
  EXPECT_EQ(first.cached_tokens, 0);

  OpenResult second = Open(prompt);
  EXPECT_THAT(second.block_table, ElementsAre(0, 1, 3));
  EXPECT_EQ(second.cached_tokens, 8);

  std::vector<int32_t> diverging = Iota(10);
  diverging[5] = 7;  // second block differs
  OpenResult partial = Open(diverging);
  EXPECT_THAT(partial.block_table, ElementsAre(0, 4, 5));
  EXPECT_EQ(partial.cached_tokens, 4);

  std::vector<int32_t> miss = Iota(5);
  miss[0] = 1;  // the first block differs, so every later block differs too
  EXPECT_EQ(Open(miss).cached_tokens, 0);

  ManagerStats stats = manager_.Stats();
  EXPECT_EQ(stats.prefix_queries_tokens, 35);
  EXPECT_EQ(stats.prefix_hits_tokens, 12);
  EXPECT_EQ(stats.in_use_blocks, kNumBlocks);
}

TEST_F(CacheManagerTest, CachedPrefixCountsAsCommitted) {
  const std::vector<int32_t> prompt = Iota(10);
  OpenAndCommit(prompt);
  OpenResult second = Open(prompt);
  ASSERT_EQ(second.cached_tokens, 8);
  // Committing the 2 uncached tokens brings the sequence to 10 committed tokens.
  EXPECT_TRUE(Commit(second.sequence_id, 10, {108, 109}).status.ok());
  StepItemResult over = Commit(second.sequence_id, 10, {110});
  EXPECT_EQ(over.status.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(over.status.message(), HasSubstr("exceeds the 10 slots"));
}

TEST_F(CacheManagerTest, AtLeastOnePromptTokenIsComputed) {
  const std::vector<int32_t> prompt = Iota(8);  // exactly 2 full blocks
  OpenResult first = OpenAndCommit(prompt);
  EXPECT_THAT(first.block_table, ElementsAre(0, 1));
  OpenResult again = Open(prompt);
  EXPECT_EQ(again.cached_tokens, 4);  // capped at 1 block, not 2
  EXPECT_THAT(again.block_table, ElementsAre(0, 2));
}

TEST_F(CacheManagerTest, TenantsNeverShare) {
  const std::vector<int32_t> prompt = Iota(9);
  OpenResult a = OpenAndCommit(prompt, "alice");
  OpenResult b = Open(prompt, "bob");
  EXPECT_EQ(b.cached_tokens, 0);
  EXPECT_THAT(b.block_table, ElementsAre(3, 4, 5));
  EXPECT_EQ(Open(prompt, "alice").cached_tokens, 8);
  EXPECT_THAT(a.block_table, ElementsAre(0, 1, 2));
}

TEST_F(CacheManagerTest, LruEvictsTheTailOfTheLeastRecentlyFreedSequence) {
  const std::vector<int32_t> a_prompt = Iota(8);
  OpenResult a = OpenAndCommit(a_prompt);  // blocks 0, 1 cached on close
  ASSERT_TRUE(manager_.CloseSequence(worker_, a.sequence_id, t0_).ok());
  EXPECT_EQ(manager_.Stats().cached_blocks, 2);
  // Queue now: 2..7 free, then 1 (A's tail), then 0. B needs 7 blocks: takes 2..7 and
  // evicts block 1, whose hash leaves the index.
  OpenResult b = Open(Iota(28, 500));
  EXPECT_THAT(b.block_table, ElementsAre(2, 3, 4, 5, 6, 7, 1));
  ManagerStats stats = manager_.Stats();
  EXPECT_EQ(stats.evictions, 1);
  EXPECT_EQ(stats.cached_blocks, 1);
  EXPECT_EQ(stats.free_blocks, 0);
  // A's prompt again hits block 0 but needs two new blocks; none: all or nothing.
  std::vector<int32_t> a_again = Iota(9);
  auto refused = manager_.OpenSequence({worker_, "t", a_again, KvMode::kPaged, 4}, t0_);
  ASSERT_EQ(refused.status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(manager_.Stats().cached_blocks, 1);
  EXPECT_EQ(manager_.Stats().prefix_queries_tokens, 8 + 28);  // the refusal counts nothing
  ExpectInvariants();
  ASSERT_TRUE(manager_.CloseSequence(worker_, b.sequence_id, t0_).ok());
  OpenResult a2 = Open(a_again);
  EXPECT_EQ(a2.cached_tokens, 4);  // only block 0 survived
  EXPECT_EQ(a2.block_table[0], 0);
}

TEST_F(CacheManagerTest, ContiguousReservationsAndFragmentation) {
  std::vector<SequenceId> ones;
  for (int i = 0; i < kNumBlocks; ++i) ones.push_back(Open({i}).sequence_id);  // blocks 0..7
  for (int i = 1; i < kNumBlocks; i += 2) {
    ASSERT_TRUE(manager_.CloseSequence(worker_, ones[i], t0_).ok());  // frees 1, 3, 5, 7
  }
  auto refused = manager_.OpenSequence({worker_, "t", Iota(4), KvMode::kContiguous, 4}, t0_);
  ASSERT_EQ(refused.status().code(), StatusCode::kResourceExhausted);
  EXPECT_THAT(refused.status().message(), HasSubstr("4 blocks free in total but no run of 2"));
  OpenResult one = Open(Iota(1), "t", KvMode::kContiguous, 3);
  EXPECT_THAT(one.block_table, ElementsAre(1));  // first fit
  for (int i = 0; i < kNumBlocks; i += 2)
    ASSERT_TRUE(manager_.CloseSequence(worker_, ones[i], t0_).ok());
  OpenResult run = Open(Iota(5), "t", KvMode::kContiguous, 7);  // 12 tokens: 3 blocks
  EXPECT_THAT(run.block_table, ElementsAre(2, 3, 4));
  EXPECT_EQ(run.cached_tokens, 0);
  // Slots within the reservation need no new blocks; beyond prompt + max_tokens fail.
  auto step =
      manager_.Step(worker_, {{run.sequence_id, 12, Iota(12)}, {run.sequence_id, 13, {}}}, t0_);
  ASSERT_TRUE(step.ok());
  EXPECT_TRUE((*step)[0].status.ok());
  EXPECT_THAT((*step)[0].new_blocks, IsEmpty());
  EXPECT_EQ((*step)[1].status.code(), StatusCode::kInvalidArgument);
  // Contiguous sequences never publish prefix blocks, and cannot be forked.
  EXPECT_EQ(manager_.Stats().cached_blocks, 0);
  EXPECT_EQ(manager_.Fork(worker_, run.sequence_id, t0_).status().code(),
            StatusCode::kFailedPrecondition);
}

TEST_F(CacheManagerTest, ForkSharesFullBlocksAndCopiesThePartialOne) {
  OpenResult parent = OpenAndCommit(Iota(6));  // block 0 full, block 1 holds 2 tokens
  EXPECT_THAT(parent.block_table, ElementsAre(0, 1));
  auto child = manager_.Fork(worker_, parent.sequence_id, t0_);
  ASSERT_TRUE(child.ok()) << child.status().ToString();
  EXPECT_THAT(child->block_table, ElementsAre(0, 2));
  EXPECT_EQ(child->copy_src_block, 1);
  EXPECT_EQ(child->copy_dst_block, 2);
  EXPECT_EQ(manager_.Stats().in_use_blocks, 3);
  ExpectInvariants();
  // The child continues from the parent's 6 committed tokens, up to prompt + max_tokens.
  EXPECT_TRUE(Commit(child->sequence_id, 8, {1, 2}).status.ok());
  EXPECT_EQ(Commit(child->sequence_id, 11, {}).status.code(), StatusCode::kInvalidArgument);
  // Closing the parent keeps the shared block for the child.
  ASSERT_TRUE(manager_.CloseSequence(worker_, parent.sequence_id, t0_).ok());
  EXPECT_EQ(manager_.Stats().in_use_blocks, 2);
  ExpectInvariants();
}

TEST_F(CacheManagerTest, ForkOnABlockBoundaryCopiesNothing) {
  OpenResult parent = OpenAndCommit(Iota(8));
  auto child = manager_.Fork(worker_, parent.sequence_id, t0_);
  ASSERT_TRUE(child.ok());
  EXPECT_THAT(child->block_table, ElementsAre(0, 1));
  EXPECT_EQ(child->copy_src_block, -1);
  EXPECT_EQ(child->copy_dst_block, -1);
  // Each grows into its own fresh block.
  EXPECT_THAT(Commit(parent.sequence_id, 9, {}).new_blocks, ElementsAre(2));
  EXPECT_THAT(Commit(child->sequence_id, 9, {}).new_blocks, ElementsAre(3));
}

TEST_F(CacheManagerTest, DoubleCloseAndUnknownIds) {
  OpenResult r = Open(Iota(3));
  ASSERT_TRUE(manager_.CloseSequence(worker_, r.sequence_id, t0_).ok());
  Status again = manager_.CloseSequence(worker_, r.sequence_id, t0_);
  EXPECT_EQ(again.code(), StatusCode::kNotFound);
  EXPECT_EQ(manager_.CloseSequence(worker_, 12345, t0_).code(), StatusCode::kNotFound);
  EXPECT_EQ(manager_.Fork(worker_, 12345, t0_).status().code(), StatusCode::kNotFound);
  Status bad_worker = manager_.Heartbeat(999, t0_);
  EXPECT_EQ(bad_worker.code(), StatusCode::kNotFound);
  EXPECT_THAT(bad_worker.message(), HasSubstr("worker 999 is not registered"));
  EXPECT_EQ(manager_.Step(999, {}, t0_).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(manager_.OpenSequence({999, "t", {1}, KvMode::kPaged, 1}, t0_).status().code(),
            StatusCode::kNotFound);
  // Another worker's sequence looks like an unknown one (no owner leaks out).
  OpenResult mine = Open(Iota(3));
  WorkerId other = manager_.RegisterWorker(t0_).worker_id;
  EXPECT_EQ(manager_.CloseSequence(other, mine.sequence_id, t0_).code(), StatusCode::kNotFound);
  EXPECT_EQ(manager_.Fork(other, mine.sequence_id, t0_).status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(manager_.CloseSequence(worker_, mine.sequence_id, t0_).ok());
}

TEST_F(CacheManagerTest, ValidatesRequests) {
  auto open = [&](std::vector<int32_t> prompt, int64_t max_tokens) {
    return manager_
        .OpenSequence({worker_, "t", std::move(prompt), KvMode::kPaged, max_tokens}, t0_)
        .status();
  };
  EXPECT_THAT(open({}, 4).message(), HasSubstr("token_ids is empty"));
  Status negative = open({1, -2}, 4);
  EXPECT_EQ(negative.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(negative.message(), HasSubstr("token_ids[1] = -2"));
  EXPECT_THAT(open({1}, 0).message(), HasSubstr("max_tokens must be > 0"));
  EXPECT_THAT(open(Iota(30), 3).message(), HasSubstr("exceeds max_context_tokens 32"));
  EXPECT_EQ(open(Iota(65), 1).code(), StatusCode::kInvalidArgument);  // per-call limit
  const Status none = manager_.OpenSequence({worker_, "t", {1}, KvMode::kNone, 1}, t0_).status();
  EXPECT_EQ(none.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(none.message(), HasSubstr("mode none"));
  auto step = manager_.Step(worker_, {{1, 1, Iota(40)}, {2, 1, Iota(40)}}, t0_);
  EXPECT_EQ(step.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(step.status().message(), HasSubstr("max_tokens_per_call 64"));
  for (int i = 0; i < 8; ++i) Open({i});
  for (int i = 0; i < 8; ++i) {  // contiguous one-block sequences would not fit: use forks
    ASSERT_TRUE(manager_.Fork(worker_, 1, t0_).ok());
  }
  Status limit = manager_.Fork(worker_, 1, t0_).status();
  EXPECT_EQ(limit.code(), StatusCode::kResourceExhausted);
  EXPECT_THAT(limit.message(), HasSubstr("max_sequences_per_worker"));
  EXPECT_EQ(open({1}, 1).code(), StatusCode::kResourceExhausted);
}

TEST_F(CacheManagerTest, StepItemsFailIndependently) {
  OpenResult a = Open(Iota(4));
  OpenResult b = Open(Iota(4, 200));
  auto r = manager_.Step(worker_,
                         {{a.sequence_id, 5, Iota(4)},  // grows into a second block
                          {777, 5, {}},                 // unknown
                          {b.sequence_id, 9, {}},       // beyond prompt + max_tokens
                          {b.sequence_id, 8, {-1}},     // bad token id
                          {b.sequence_id, 4, Iota(5)},  // more commits than slots
                          {b.sequence_id, 8, Iota(4, 200)}},
                         t0_);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->size(), 6u);
  EXPECT_TRUE((*r)[0].status.ok());
  EXPECT_THAT((*r)[0].new_blocks, ElementsAre(2));
  EXPECT_EQ((*r)[1].status.code(), StatusCode::kNotFound);
  EXPECT_EQ((*r)[1].sequence_id, 777);
  EXPECT_EQ((*r)[2].status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*r)[3].status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*r)[4].status.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE((*r)[5].status.ok());
  EXPECT_THAT((*r)[5].new_blocks, ElementsAre(3));
  // Out of blocks for one item only: 4 free, c asks for 5 more.
  OpenResult c = Open(Iota(1, 300), "t", KvMode::kPaged, 24);
  auto full = manager_.Step(worker_, {{c.sequence_id, 24, {}}, {a.sequence_id, 8, {}}}, t0_);
  ASSERT_TRUE(full.ok());
  EXPECT_EQ((*full)[0].status.code(), StatusCode::kResourceExhausted);
  EXPECT_THAT((*full)[0].new_blocks, IsEmpty());
  EXPECT_TRUE((*full)[1].status.ok());
  EXPECT_EQ(manager_.Stats().in_use_blocks, 5);
}

TEST_F(CacheManagerTest, ExpiredLeaseFreesBlocksAndKeepsCommittedOnesCached) {
  OpenResult r = OpenAndCommit(Iota(6));  // block 0 full and committed, block 1 partial
  WorkerId alive = manager_.RegisterWorker(t0_).worker_id;
  EXPECT_THAT(manager_.ExpireLeases(t0_ + milliseconds(1000)), IsEmpty());  // not past the TTL
  ASSERT_TRUE(manager_.Heartbeat(alive, t0_ + milliseconds(900)).ok());
  EXPECT_THAT(manager_.ExpireLeases(t0_ + milliseconds(1001)), ElementsAre(worker_));
  ManagerStats stats = manager_.Stats();
  EXPECT_EQ(stats.num_sequences, 0);
  EXPECT_EQ(stats.in_use_blocks, 0);
  EXPECT_EQ(stats.cached_blocks, 1);
  EXPECT_EQ(stats.expired_leases, 1);
  EXPECT_EQ(stats.num_workers, 1);
  EXPECT_EQ(manager_.Heartbeat(worker_, t0_).code(), StatusCode::kNotFound);
  EXPECT_EQ(manager_.CloseSequence(worker_, r.sequence_id, t0_).code(), StatusCode::kNotFound);
  // Another worker reuses the prefix.
  auto again = manager_.OpenSequence({alive, "t", Iota(6), KvMode::kPaged, 4}, t0_);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->cached_tokens, 4);
  EXPECT_EQ(again->block_table[0], 0);
}

TEST_F(CacheManagerTest, StatsCountReservedAndUsedBytes) {
  constexpr int64_t kBlockBytes = 2 * 1 * kBlockSize * 1 * 2 * 4;  // K+V, fp32
  OpenResult paged = OpenAndCommit(Iota(6));                       // 2 blocks, 6 tokens
  OpenResult contiguous = Open(Iota(2, 50), "t", KvMode::kContiguous, 10);  // 3 blocks
  ASSERT_TRUE(Commit(contiguous.sequence_id, 2, Iota(2, 50)).status.ok());
  auto child = manager_.Fork(worker_, paged.sequence_id, t0_);  // shares block 0, copies 1
  ASSERT_TRUE(child.ok());
  ManagerStats stats = manager_.Stats();
  EXPECT_EQ(stats.in_use_blocks, 6);
  EXPECT_EQ(stats.bytes_reserved, 6 * kBlockBytes);
  EXPECT_EQ(stats.bytes_used, (6 + 2 + 2) * kBlockBytes / kBlockSize);
  EXPECT_EQ(stats.num_sequences, 3);
}

}  // namespace
}  // namespace kvpool::manager
