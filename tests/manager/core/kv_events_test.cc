// KV events from the cache manager's core: a committed full block is one BlockStored
// (hashes chained from the parent, the block's token ids, the tenant), an eviction is
// one BlockRemoved, in the order they happened; a subscriber that applies the events
// to a set holds exactly the prefix index after every call of a random workload with
// two tenants and evictions. Without a sink the cache works as before.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <numeric>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "cache_service/block_hash.h"
#include "cache_service/cache_manager.h"
#include "cache_service/kv_events.h"

namespace kvpool::manager {
namespace {

using ::testing::ElementsAre;

struct RecordingSink : KvEventSink {
  std::vector<std::vector<KvEvent>> calls;
  void Publish(std::vector<KvEvent> events) override { calls.push_back(std::move(events)); }
  std::vector<KvEvent> All() const {
    std::vector<KvEvent> all;
    for (const auto& c : calls) all.insert(all.end(), c.begin(), c.end());
    return all;
  }
};

CacheManagerOptions Options(KvEventSink* sink, int64_t num_blocks) {
  CacheManagerOptions o;
  o.geometry.num_layers = 1;
  o.geometry.num_kv_heads = 1;
  o.geometry.head_dim = 2;
  o.geometry.block_size = 4;
  o.geometry.num_blocks = num_blocks;
  o.instance_id = "kv-events-test";
  o.first_worker_id = 1;
  o.event_sink = sink;
  return o;
}

std::vector<int32_t> Iota(int32_t n, int32_t first) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), first);
  return v;
}

std::set<std::pair<std::string, uint64_t>> IndexOf(const CacheManager& m) {
  std::set<std::pair<std::string, uint64_t>> out;
  for (const IndexedBlock& b : m.PrefixIndexBlocks()) out.insert({b.tenant, b.hash});
  return out;
}

TEST(KvEventsTest, CommittedBlocksAreStoredWithChainedHashesAndTokens) {
  RecordingSink sink;
  CacheManager m(Options(&sink, 8));
  const auto t0 = Clock::now();
  const WorkerId w = m.RegisterWorker(t0).worker_id;
  const std::vector<int32_t> prompt = Iota(10, 100);
  const OpenResult opened = *m.OpenSequence({w, "t", prompt, KvMode::kPaged, 4}, t0);
  EXPECT_TRUE(sink.calls.empty());  // nothing was evicted or committed
  ASSERT_TRUE(m.Step(w, {{opened.sequence_id, 10, prompt}}, t0).ok());
  std::vector<BlockHash> want;
  HashFullBlocks(TenantSalt("t"), prompt, 4, 0, 2, &want);
  ASSERT_EQ(sink.calls.size(), 1u);
  ASSERT_EQ(sink.calls[0].size(), 1u);
  const KvEvent& stored = sink.calls[0][0];
  EXPECT_EQ(stored.kind, KvEvent::Kind::kBlockStored);
  EXPECT_EQ(stored.tenant, "t");
  EXPECT_THAT(stored.block_hashes, ElementsAre(want[0].lo, want[1].lo));
  EXPECT_FALSE(stored.parent_block_hash.has_value());
  EXPECT_EQ(stored.token_ids, Iota(8, 100));
  // Two more tokens fill the third block: its parent is the second.
  ASSERT_TRUE(m.Step(w, {{opened.sequence_id, 12, {110, 111}}}, t0).ok());
  ASSERT_EQ(sink.calls.size(), 2u);
  const KvEvent& next = sink.calls[1][0];
  ASSERT_EQ(next.block_hashes.size(), 1u);
  EXPECT_EQ(next.parent_block_hash, want[1].lo);
  EXPECT_EQ(next.token_ids, Iota(4, 108));
  // Closing keeps the blocks cached: no event. Reusing the pool evicts them, in order.
  ASSERT_TRUE(m.CloseSequence(w, opened.sequence_id, t0).ok());
  EXPECT_EQ(sink.calls.size(), 2u);
  ASSERT_TRUE(m.OpenSequence({w, "u", Iota(32, 500), KvMode::kPaged, 1}, t0).ok());
  ASSERT_EQ(sink.calls.size(), 3u);
  ASSERT_EQ(sink.calls[2].size(), 1u);
  EXPECT_EQ(sink.calls[2][0].kind, KvEvent::Kind::kBlockRemoved);
  EXPECT_EQ(sink.calls[2][0].tenant, "t");
  EXPECT_EQ(sink.calls[2][0].block_hashes.size(), 3u);
  EXPECT_TRUE(IndexOf(m).empty());
}

TEST(KvEventsTest, EventsRebuildThePrefixIndexThroughARandomWorkload) {
  RecordingSink sink;
  CacheManager m(Options(&sink, 24));
  const auto t0 = Clock::now();
  const WorkerId w = m.RegisterWorker(t0).worker_id;
  std::mt19937 rng(7);
  std::set<std::pair<std::string, uint64_t>> mirror;
  size_t applied = 0;
  auto apply = [&] {
    for (; applied < sink.calls.size(); ++applied) {
      for (const KvEvent& e : sink.calls[applied]) {
        for (uint64_t h : e.block_hashes) {
          if (e.kind == KvEvent::Kind::kBlockStored) {
            EXPECT_TRUE(mirror.insert({e.tenant, h}).second) << "stored twice";
          } else {
            EXPECT_EQ(mirror.erase({e.tenant, h}), 1u) << "removed but never stored";
          }
        }
      }
    }
    ASSERT_EQ(mirror, IndexOf(m));
  };
  std::vector<SequenceId> open;
  int64_t evicted_calls = 0;
  for (int i = 0; i < 400; ++i) {
    const int op = static_cast<int>(rng() % 3);
    if (op < 2 || open.empty()) {
      // Prompts share prefixes: a few stems, then a random tail.
      const std::string tenant = rng() % 2 ? "a" : "b";
      std::vector<int32_t> prompt = Iota(4 * static_cast<int32_t>(rng() % 3), 1000 * (rng() % 3));
      const int32_t tail = 1 + static_cast<int32_t>(rng() % 12);
      for (int32_t t = 0; t < tail; ++t) prompt.push_back(static_cast<int32_t>(rng() % 50));
      auto r = m.OpenSequence({w, tenant, prompt, KvMode::kPaged, 4}, t0);
      if (!r.ok()) {
        // A full pool: close the oldest to make room.
        ASSERT_EQ(r.status().code(), StatusCode::kResourceExhausted);
        ASSERT_TRUE(m.CloseSequence(w, open.front(), t0).ok());
        open.erase(open.begin());
      } else {
        std::vector<int32_t> rest(prompt.begin() + r->cached_tokens, prompt.end());
        auto stepped = m.Step(w, {{r->sequence_id, static_cast<int64_t>(prompt.size()), rest}}, t0);
        ASSERT_TRUE(stepped.ok());
        open.push_back(r->sequence_id);
      }
    } else {
      const size_t k = rng() % open.size();
      ASSERT_TRUE(m.CloseSequence(w, open[k], t0).ok());
      open.erase(open.begin() + static_cast<std::ptrdiff_t>(k));
    }
    for (size_t c = applied; c < sink.calls.size(); ++c) {
      for (const KvEvent& e : sink.calls[c]) evicted_calls += e.kind == KvEvent::Kind::kBlockRemoved;
    }
    apply();
    ASSERT_TRUE(m.CheckInvariants().ok());
  }
  EXPECT_GT(evicted_calls, 10);  // the workload did evict
  EXPECT_GT(mirror.size(), 0u);
}

TEST(KvEventsTest, WithoutASinkTheCacheWorksAsBefore) {
  CacheManager m(Options(nullptr, 8));
  const auto t0 = Clock::now();
  const WorkerId w = m.RegisterWorker(t0).worker_id;
  const OpenResult opened = *m.OpenSequence({w, "t", Iota(8, 1), KvMode::kPaged, 4}, t0);
  ASSERT_TRUE(m.Step(w, {{opened.sequence_id, 8, Iota(8, 1)}}, t0).ok());
  EXPECT_EQ(m.PrefixIndexBlocks().size(), 2u);  // cached as always, only not told
}

}  // namespace
}  // namespace kvpool::manager
