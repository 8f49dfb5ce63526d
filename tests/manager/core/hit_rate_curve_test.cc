// StackDistanceTracker and HitRateCurveRecorder against brute force: a list-based LRU
// replayed on the same references at each size. Exact below the sampling bound, within
// 2 points above it, on loop, zipf, scan and prefix-chain traces.
#include "cache_service/hit_rate_curve.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <list>
#include <random>
#include <unordered_map>
#include <vector>

#include "cache_service/stack_distance.h"

namespace kvpool::manager {
namespace {

using std::chrono::steady_clock;

uint64_t Mix(uint64_t x) {  // splitmix64's finalizer: a bijection
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
BlockHash HashOf(uint64_t key) { return {Mix(key), Mix(key ^ 0x5bd1e995ULL)}; }

// An LRU cache of `capacity` keys, replayed reference by reference.
class BruteLru {
 public:
  explicit BruteLru(int64_t capacity) : capacity_(capacity) {}
  // Whether `key` is cached before this reference; it becomes the most recent.
  bool Reference(uint64_t key) {
    auto it = where_.find(key);
    const bool hit = it != where_.end();
    if (hit) order_.erase(it->second);
    order_.push_front(key);
    where_[key] = order_.begin();
    if (static_cast<int64_t>(order_.size()) > capacity_) {
      where_.erase(order_.back());
      order_.pop_back();
    }
    return hit;
  }

 private:
  int64_t capacity_;
  std::list<uint64_t> order_;
  std::unordered_map<uint64_t, std::list<uint64_t>::iterator> where_;
};

// One prompt: its looked-up blocks (counted, prefix semantics), then the blocks touched
// uncounted (published, released).
struct Request {
  std::vector<uint64_t> lookups;
  std::vector<uint64_t> touches;
  int64_t prompt_tokens = 0;
};

constexpr int32_t kBlockSize = 16;

double BruteHitRate(const std::vector<Request>& trace, int64_t capacity) {
  BruteLru lru(capacity);
  int64_t hits = 0, queries = 0;
  for (const Request& r : trace) {
    bool prefix = true;
    for (uint64_t key : r.lookups) {
      prefix = lru.Reference(key) && prefix;
      if (prefix) hits += kBlockSize;
    }
    for (uint64_t key : r.touches) lru.Reference(key);
    queries += r.prompt_tokens;
  }
  return static_cast<double>(hits) / static_cast<double>(queries);
}

HitRateCurves Replay(const std::vector<Request>& trace, HitRateCurveOptions options) {
  options.block_size = kBlockSize;
  HitRateCurveRecorder recorder(options);
  const auto now = steady_clock::now();
  std::vector<BlockHash> hashes;
  for (const Request& r : trace) {
    hashes.clear();
    for (uint64_t key : r.lookups) hashes.push_back(HashOf(key));
    recorder.RecordLookup(0, hashes, r.prompt_tokens, now);
    for (uint64_t key : r.touches) recorder.Touch(HashOf(key));
  }
  return recorder.Curves({"t"}, now);
}

Request Single(uint64_t key) { return Request{{key}, {}, kBlockSize}; }

std::vector<Request> LoopTrace(int keys, int rounds) {
  std::vector<Request> trace;
  for (int r = 0; r < rounds; ++r) {
    for (int k = 0; k < keys; ++k) trace.push_back(Single(k));
  }
  return trace;
}

std::vector<Request> ZipfTrace(int keys, double alpha, int n, uint64_t seed) {
  std::vector<double> weights(static_cast<size_t>(keys));
  for (int k = 0; k < keys; ++k) weights[k] = 1.0 / std::pow(k + 1.0, alpha);
  std::discrete_distribution<int> pick(weights.begin(), weights.end());
  std::mt19937_64 rng(seed);
  std::vector<Request> trace;
  for (int i = 0; i < n; ++i) trace.push_back(Single(static_cast<uint64_t>(pick(rng))));
  return trace;
}

// A hot set of 40 keys, with every fourth reference a key never seen before.
std::vector<Request> ScanTrace(int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<Request> trace;
  uint64_t fresh = 1000000;
  for (int i = 0; i < n; ++i) {
    trace.push_back(Single(i % 4 == 3 ? fresh++ : rng() % 40));
  }
  return trace;
}

// Prompts that share prefixes: document d (zipf over 300), 1..8 blocks of it, then
// 1..3 generated blocks of its own published, then everything released last first.
std::vector<Request> ChainTrace(int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<double> weights(300);
  for (int d = 0; d < 300; ++d) weights[d] = 1.0 / (d + 1.0);
  std::discrete_distribution<int> doc(weights.begin(), weights.end());
  std::vector<Request> trace;
  uint64_t generated = 1ULL << 40;
  for (int i = 0; i < n; ++i) {
    Request r;
    const uint64_t d = static_cast<uint64_t>(doc(rng));
    const int blocks = 1 + static_cast<int>(rng() % 8);
    for (int j = 0; j < blocks; ++j) r.lookups.push_back(d * 64 + j);
    r.prompt_tokens = blocks * kBlockSize + 1 + static_cast<int64_t>(rng() % kBlockSize);
    std::vector<uint64_t> held = r.lookups;
    for (int g = 1 + static_cast<int>(rng() % 3); g > 0; --g) {
      r.touches.push_back(generated);
      held.push_back(generated++);
    }
    r.touches.insert(r.touches.end(), held.rbegin(), held.rend());
    trace.push_back(std::move(r));
  }
  return trace;
}

TEST(StackDistanceTrackerTest, EqualsTheDepthInABruteForceRecencyList) {
  for (int64_t max_keys : {1, 3, 17, 64}) {
    StackDistanceTracker tracker(max_keys);
    std::list<uint64_t> recency;  // most recent first, unbounded
    std::mt19937_64 rng(static_cast<uint64_t>(max_keys));
    for (int i = 0; i < 20000; ++i) {  // many renumberings of the 2*max_keys+2 slots
      const uint64_t key = rng() % 100;
      int64_t depth = 1, want = 0;
      for (auto it = recency.begin(); it != recency.end(); ++it, ++depth) {
        if (*it != key) continue;
        want = depth <= max_keys ? depth : 0;
        recency.erase(it);
        break;
      }
      recency.push_front(key);
      ASSERT_EQ(tracker.Reference(key), want) << "reference " << i << ", max_keys " << max_keys;
      ASSERT_EQ(tracker.size(), std::min<int64_t>(max_keys, static_cast<int64_t>(recency.size())));
    }
  }
}

TEST(StackDistanceTrackerTest, ALoopOfKKeysIsAtDistanceK) {
  StackDistanceTracker tracker(8);
  for (uint64_t k = 0; k < 5; ++k) EXPECT_EQ(tracker.Reference(k), 0);
  for (uint64_t k = 0; k < 5; ++k) EXPECT_EQ(tracker.Reference(k), 5);
  EXPECT_EQ(tracker.Reference(4), 1);
}

void ExpectExactBelowBound(const std::vector<Request>& trace, int64_t pool_blocks) {
  HitRateCurveOptions options;
  options.pool_blocks = pool_blocks;
  const HitRateCurves curves = Replay(trace, options);
  ASSERT_EQ(curves.exact_blocks, 4 * pool_blocks);
  const HitRateCurve& all = curves.curves.at(0);
  int checked = 0;
  for (size_t i = 0; i < curves.cache_blocks.size(); ++i) {
    const int64_t size = curves.cache_blocks[i];
    if (size > curves.exact_blocks) break;
    if (size % 7 != 1 && size != pool_blocks && size != curves.exact_blocks) continue;
    EXPECT_DOUBLE_EQ(all.hit_rate[i], BruteHitRate(trace, size)) << "at " << size << " blocks";
    ++checked;
  }
  EXPECT_GE(checked, 10);
}

TEST(HitRateCurveTest, LoopIsExact) { ExpectExactBelowBound(LoopTrace(100, 20), 64); }
TEST(HitRateCurveTest, ZipfIsExact) { ExpectExactBelowBound(ZipfTrace(2000, 0.9, 40000, 1), 64); }
TEST(HitRateCurveTest, ScanIsExact) { ExpectExactBelowBound(ScanTrace(40000, 2), 16); }
TEST(HitRateCurveTest, PrefixChainsAreExact) { ExpectExactBelowBound(ChainTrace(8000, 3), 128); }

TEST(HitRateCurveTest, LoopCurveIsAStepAtTheLoopLength) {
  HitRateCurveOptions options;
  options.pool_blocks = 64;
  const HitRateCurves curves = Replay(LoopTrace(100, 20), options);
  const HitRateCurve& all = curves.curves.at(0);
  EXPECT_DOUBLE_EQ(curves.HitRateAt(all, 99), 0.0);
  EXPECT_DOUBLE_EQ(curves.HitRateAt(all, 100), 19.0 / 20.0);
  EXPECT_EQ(curves.Knee(all, 0.05), 100);
}

// Beyond exact_blocks the curve is SHARDS-sampled: within 2 points of brute force.
void ExpectSampledWithin2Points(const std::vector<Request>& trace, double rate) {
  HitRateCurveOptions options;
  options.pool_blocks = 64;  // exact to 256 blocks, sampled to 4096
  options.sample_rate = rate;
  const HitRateCurves curves = Replay(trace, options);
  ASSERT_EQ(curves.exact_blocks, 256);
  ASSERT_EQ(curves.cache_blocks.back(), 4096);
  const HitRateCurve& all = curves.curves.at(0);
  for (int64_t size : {400, 700, 1024, 2048, 4096}) {
    const double brute = BruteHitRate(trace, size);
    EXPECT_NEAR(curves.HitRateAt(all, static_cast<double>(size)), brute, 0.02)
        << "at " << size << " blocks, brute force " << brute;
  }
}

TEST(HitRateCurveTest, ZipfAboveTheBoundIsWithin2Points) {
  ExpectSampledWithin2Points(ZipfTrace(20000, 0.8, 200000, 4), 1.0 / 8);
}
TEST(HitRateCurveTest, LoopAboveTheBoundIsWithin2Points) {
  ExpectSampledWithin2Points(LoopTrace(1500, 30), 1.0 / 8);
}
TEST(HitRateCurveTest, ScanAboveTheBoundIsWithin2Points) {
  ExpectSampledWithin2Points(ScanTrace(200000, 5), 1.0 / 8);
}
TEST(HitRateCurveTest, AtRateOneTheSampledRegionIsExact) {
  const std::vector<Request> trace = ZipfTrace(20000, 0.8, 100000, 6);
  HitRateCurveOptions options;
  options.pool_blocks = 64;
  options.sample_rate = 1;
  const HitRateCurves curves = Replay(trace, options);
  const HitRateCurve& all = curves.curves.at(0);
  for (size_t i = 0; i < curves.cache_blocks.size(); i += 97) {
    const int64_t size = curves.cache_blocks[i];
    if (size <= curves.exact_blocks) continue;
    // The sampled buckets are geometric: a size is exact at its bucket's upper edge.
    EXPECT_NEAR(all.hit_rate[i], BruteHitRate(trace, size), 1e-12) << "at " << size;
  }
}

TEST(HitRateCurveTest, NoSampledRangeWhenItEndsAtTheExactBound) {
  HitRateCurveOptions options;
  options.pool_blocks = 4;  // exact to 16 blocks, and nothing beyond
  options.sampled_blocks = 16;
  options.sample_rate = 0.5;
  const std::vector<Request> trace = ZipfTrace(200, 0.8, 5000, 7);
  const HitRateCurves curves = Replay(trace, options);
  ASSERT_EQ(curves.cache_blocks.size(), 16u);
  EXPECT_DOUBLE_EQ(curves.curves.at(0).hit_rate.back(), BruteHitRate(trace, 16));
}

TEST(HitRateCurveTest, PerTenantAndSlidingWindow) {
  HitRateCurveOptions options;
  options.pool_blocks = 8;
  options.window = std::chrono::seconds(10);
  options.window_epochs = 10;
  options.block_size = kBlockSize;
  HitRateCurveRecorder recorder(options);
  const auto t0 = steady_clock::now();
  // Tenant 0 repeats one block at t0 (1 hit of 2); tenant 1 looks up a fresh one later.
  recorder.RecordLookup(0, {HashOf(1)}, kBlockSize, t0);
  recorder.RecordLookup(0, {HashOf(1)}, kBlockSize, t0);
  recorder.RecordLookup(1, {HashOf(2)}, 2 * kBlockSize, t0 + std::chrono::seconds(15));
  const HitRateCurves curves = recorder.Curves({"a", "b"}, t0 + std::chrono::seconds(15));
  ASSERT_EQ(curves.curves.size(), 6u);  // overall, a, b; each since start and windowed
  auto find = [&](const std::string& tenant, bool window) {
    for (const HitRateCurve& c : curves.curves) {
      if (c.tenant == tenant && c.window == window) return c;
    }
    ADD_FAILURE() << "no curve for '" << tenant << "'";
    return HitRateCurve{};
  };
  EXPECT_EQ(find("", false).query_tokens, 4 * kBlockSize);
  EXPECT_DOUBLE_EQ(curves.HitRateAt(find("", false), 8), 0.25);
  EXPECT_DOUBLE_EQ(curves.HitRateAt(find("a", false), 8), 0.5);
  EXPECT_DOUBLE_EQ(curves.HitRateAt(find("b", false), 8), 0.0);
  // Tenant a's lookups are 15 s old: outside the 10 s window.
  EXPECT_EQ(find("", true).query_tokens, 2 * kBlockSize);
  EXPECT_EQ(find("a", true).query_tokens, 0);
}

TEST(HitRateCurveTest, DefaultsBoundTheTrackers) {
  HitRateCurveOptions options;
  options.pool_blocks = 1 << 19;  // 4x is over the 2^20-block cap of the exact tracker
  HitRateCurveRecorder recorder(options);
  EXPECT_EQ(recorder.options().exact_blocks, 1 << 20);
  EXPECT_EQ(recorder.options().sampled_blocks, int64_t{1} << 24);
  EXPECT_DOUBLE_EQ(recorder.options().sample_rate, 1.0 / 256);
  const HitRateCurves curves = recorder.Curves({}, steady_clock::now());
  EXPECT_EQ(curves.cache_blocks.size(), static_cast<size_t>(HitRateCurveRecorder::kExactPoints +
                                                            HitRateCurveRecorder::kSampledPoints));
}

}  // namespace
}  // namespace kvpool::manager
