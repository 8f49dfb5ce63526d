// Timing helpers of the engine tools (kvpool-engine-bench, kvpool-precision-bench):
// seeded random requests added to an OfflineEngine, and medians of timed decode steps
// and prefills. Header-only; the tools are single files each.
#pragma once

#include <algorithm>
#include <chrono>
#include <random>
#include <vector>

#include "engine/engine.h"
#include "service/offline_engine.h"

namespace kvpool {

using worker::OfflineEngine;

inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Point {
  KvMode mode;
  int64_t context;
};

// A request of `context` random prompt tokens (seeded) that decodes `steps` tokens
// and one more, ignoring EOS.
inline GenerationRequest TimedRequest(const OfflineEngine& engine, int64_t context, KvMode mode,
                                      int32_t steps, uint32_t seed) {
  GenerationRequest r;
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0,
                                              static_cast<int32_t>(engine.config().vocab_size) - 1);
  for (int64_t i = 0; i < context; ++i) r.prompt.push_back(dist(rng));
  r.max_tokens = steps + 1;
  r.mode = mode;
  r.ignore_eos = true;
  return r;
}

// TimedRequest added to the engine (which checks it as every API checks a request:
// flags can ask for more context than the model has), its blocks from the manager.
inline StatusOr<SequenceId> AddTimed(OfflineEngine& engine, int64_t context, KvMode mode,
                                     int32_t steps, uint32_t seed) {
  return engine.AddSequence(TimedRequest(engine, context, mode, steps, seed));
}

// Median seconds of one decode step for batch-1 sequences whose contexts start at
// each point's `context` (growing by one per step). The points' steps are interleaved
// (a step of each in turn), so that a slow spell of a noisy machine hits them all
// alike and their ratios stay honest.
inline StatusOr<std::vector<double>> DecodeSecondsPerToken(OfflineEngine& engine,
                                                           const std::vector<Point>& points,
                                                           int32_t warmup, int32_t steps) {
  std::vector<SequenceId> ids;
  auto release = [&] {
    for (SequenceId id : ids) (void)engine.Release(id);
  };
  for (const Point& p : points) {
    auto id = AddTimed(engine, p.context, p.mode, warmup + steps, static_cast<uint32_t>(p.context));
    if (!id.ok()) {
      release();
      return id.status();
    }
    ids.push_back(*id);
    Status st = engine.Prefill({*id});
    if (!st.ok()) {
      release();
      return st;
    }
  }
  std::vector<std::vector<double>> times(points.size());
  for (int32_t i = 0; i < warmup + steps; ++i) {
    for (size_t p = 0; p < points.size(); ++p) {
      const auto t0 = std::chrono::steady_clock::now();
      Status st = engine.Decode({ids[p]});
      if (!st.ok()) {
        release();
        return st;
      }
      if (i >= warmup) {
        times[p].push_back(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
    }
  }
  release();
  std::vector<double> medians;
  for (auto& t : times) medians.push_back(Median(t));
  return medians;
}

// Median seconds of the paged prefill of one `tokens`-token prompt (a fresh sequence
// each time, nothing cached: callers that time again on the same engine pass another
// `seed_base`, or the prompts would be prefix hits).
inline StatusOr<double> PrefillSeconds(OfflineEngine& engine, int64_t tokens, int32_t warmup,
                                       int32_t steps, uint32_t seed_base = 0) {
  std::vector<double> times;
  for (int32_t i = 0; i < warmup + steps; ++i) {
    KVPOOL_ASSIGN_OR_RETURN(SequenceId id,
                            AddTimed(engine, tokens, KvMode::kPaged, 1,
                                     seed_base + static_cast<uint32_t>(tokens * 100 + i)));
    const auto t0 = std::chrono::steady_clock::now();
    const Status st = engine.Prefill({id});
    const double took =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    (void)engine.Release(id);
    KVPOOL_RETURN_IF_ERROR(st);
    if (i >= warmup) times.push_back(took);
  }
  return Median(times);
}

}  // namespace kvpool
