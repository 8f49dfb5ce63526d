// HitRateCurveRecorder: the prefix cache's predicted hit rate at every pool size, from
// the live stream of block references (Mattson's stack distances over the same events
// the pool's LRU sees). It owns the stack-distance trackers and the histograms; it
// never decides what is cached or evicted (the block pool does) and never reads a
// clock (`now` comes in).
//
// The model: an LRU cache of C blocks over the block hashes the manager references,
//   - a prompt lookup references each of the prompt's looked-up full blocks in order
//     (the counted references: their tokens make the hit rate);
//   - a full block whose hash enters the index, and each hashed block a sequence
//     releases (last block first, as the pool queues them), is referenced uncounted.
// A prompt's block j hits at size C when it and every block before it are among the C
// most recent (prefix hits stop at the first miss), so its tokens count as hits at
// every C >= the running maximum of the distances of blocks 0..j. Token hit rate =
// hit tokens / prompt tokens, as kvpool_prefix_cache_hits_tokens_total /
// kvpool_prefix_cache_queries_tokens_total count them.
//
// Where the real pool differs from the model: blocks held by running sequences cannot
// be evicted and take pool room without a hash (their partial blocks), so a busy pool
// of C blocks caches fewer than C; pins and retention priorities evict out of LRU
// order; a block re-published under a hash another block already holds keeps the old
// block's place.
//
// Sizes up to exact_blocks (4x the pool by default) are exact: one tracker follows
// every key to that depth. Beyond it, to sampled_blocks (64x the pool), the curve is
// estimated SHARDS-style (Waldspurger et al., FAST '15): a second tracker follows only
// the keys whose hash falls under sample_rate, scales their distances by
// 1/sample_rate, and the tokens it places beyond exact_blocks are scaled by (all
// looked-up blocks / sampled looked-up blocks). Cost per reference: O(log exact_blocks)
// plus O(log sampled-tracker size) for a sampled key.
//
// Curves: overall and per tenant (the tenant's own lookups, distances in the shared
// pool), since start and over a sliding window of `window` (window_epochs epochs; the
// oldest epoch drops whole).
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "cache_service/block_hash.h"
#include "cache_service/stack_distance.h"

namespace kvpool::manager {

struct HitRateCurveOptions {
  int64_t pool_blocks = 0;
  int32_t block_size = 16;
  // 0: the defaults (4x the pool, capped at 2^20 blocks; 16x that; the rate that
  // keeps the sampled tracker at <= 2^16 keys, at most 1).
  int64_t exact_blocks = 0;
  int64_t sampled_blocks = 0;
  double sample_rate = 0;
  std::chrono::milliseconds window{300000};
  int32_t window_epochs = 10;
};

// One curve: the predicted token hit rate at each size of HitRateCurves::cache_blocks.
struct HitRateCurve {
  std::string tenant;        // empty: every tenant
  bool window = false;       // over the sliding window (else since start)
  int64_t query_tokens = 0;  // prompt tokens looked up in what it covers
  std::vector<double> hit_rate;
};

// The knee's threshold the endpoints use: doubling the pool gains under 5 points.
inline constexpr double kKneeMinGain = 0.05;

struct HitRateCurves {
  int64_t pool_blocks = 0;
  int64_t exact_blocks = 0;  // cache_blocks <= this are exact; beyond, sampled
  double sample_rate = 1;
  double window_seconds = 0;
  std::vector<int64_t> cache_blocks;  // ascending: the sizes every curve is given at
  std::vector<HitRateCurve> curves;   // overall first (since start, window), then per tenant

  // Linear interpolation of `curve` at `blocks` (clamped to the sizes given; 0 below
  // the first size's share).
  double HitRateAt(const HitRateCurve& curve, double blocks) const;
  // The knee ("sweet spot"): the smallest size from which no doubling of the pool gains
  // `min_gain` (a fraction) of hit rate or more, among the sizes whose double is on the
  // curve; -1 when there is none (or no lookups).
  int64_t Knee(const HitRateCurve& curve, double min_gain) const;
};

class HitRateCurveRecorder {
 public:
  explicit HitRateCurveRecorder(HitRateCurveOptions options);

  // A prompt lookup by tenant `tenant` (an index, < 2^16): `looked_up` are the hashes
  // of the prompt's full blocks the lookup considered, in order; `prompt_tokens` all
  // its tokens.
  void RecordLookup(int32_t tenant, const std::vector<BlockHash>& looked_up, int64_t prompt_tokens,
                    std::chrono::steady_clock::time_point now);
  // An uncounted reference (a block cached, or released).
  void Touch(const BlockHash& hash);

  // The curves; `tenant_names[i]` names tenant index i.
  HitRateCurves Curves(const std::vector<std::string>& tenant_names,
                       std::chrono::steady_clock::time_point now) const;

  const HitRateCurveOptions& options() const { return options_; }

  static constexpr int kExactPoints = 512;
  static constexpr int kSampledPoints = 64;

 private:
  // Token counts by distance bucket (exact buckets, then sampled ones).
  struct Counts {
    int64_t query_tokens = 0;
    int64_t lookups = 0, sampled_lookups = 0;  // looked-up blocks, and those sampled
    std::array<int64_t, kExactPoints> exact{};
    std::array<int64_t, kSampledPoints> sampled{};
    void Add(const Counts& o);
  };
  struct TenantCounts {
    Counts all_time;
    std::vector<Counts> epochs;  // ring, window_epochs long
  };

  bool Sampled(const BlockHash& hash) const;
  int ExactBucket(int64_t distance) const;
  int SampledBucket(double distance) const;
  // Moves the epoch ring to `now`, clearing the epochs that ended.
  void Advance(std::chrono::steady_clock::time_point now);
  std::vector<double> HitRates(const Counts& c) const;

  HitRateCurveOptions options_;
  int64_t exact_width_ = 1;  // blocks per exact bucket
  uint64_t sample_threshold_ = 0;
  std::vector<int64_t> sizes_;
  StackDistanceTracker exact_;
  StackDistanceTracker sampled_;
  std::vector<TenantCounts> tenants_;  // by tenant index
  TenantCounts overall_;
  int64_t epoch_ = -1;  // index of the current epoch since the first record
  std::chrono::steady_clock::time_point start_{};
  bool started_ = false;
  std::vector<int64_t> distances_, sampled_distances_;  // scratch, per lookup
};

}  // namespace kvpool::manager
