// kvpool-hit-rate-bench (Google Benchmark): what the predicted hit-rate curve costs the
// manager per block reference, at several pool sizes, on a zipf stream of block hashes
// (about a third of the references beyond the exact bound) and on an LRU-friendly loop.
// The manager records one reference per looked-up prompt block, per block it caches
// and per hashed block a sequence releases.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>
#include <vector>

#include "cache_service/hit_rate_curve.h"

namespace kvpool::manager {
namespace {

uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Block hashes drawn zipf(0.9) over 16x the pool's blocks (inverse-CDF table).
std::vector<BlockHash> ZipfStream(int64_t pool_blocks, size_t n) {
  const int64_t keys = 16 * pool_blocks;
  std::vector<double> cdf(static_cast<size_t>(keys));
  double sum = 0;
  for (int64_t k = 0; k < keys; ++k) cdf[static_cast<size_t>(k)] = sum += std::pow(k + 1.0, -0.9);
  std::mt19937_64 rng(1);
  std::uniform_real_distribution<double> u(0, sum);
  std::vector<BlockHash> out(n);
  for (BlockHash& h : out) {
    const auto k =
        static_cast<uint64_t>(std::lower_bound(cdf.begin(), cdf.end(), u(rng)) - cdf.begin());
    h = {Mix(k), Mix(k ^ 0x5bd1e995ULL)};
  }
  return out;
}

void BM_RecordLookup(benchmark::State& state) {
  HitRateCurveOptions options;
  options.pool_blocks = state.range(0);
  HitRateCurveRecorder recorder(options);
  const std::vector<BlockHash> stream = ZipfStream(options.pool_blocks, 1 << 20);
  const auto now = std::chrono::steady_clock::now();
  std::vector<BlockHash> prompt(8);  // 8 blocks per lookup
  size_t i = 0;
  for (auto _ : state) {
    for (BlockHash& h : prompt) h = stream[i++ & (stream.size() - 1)];
    recorder.RecordLookup(0, prompt, 8 * 16, now);
  }
  state.SetItemsProcessed(state.iterations() * 8);  // block references
}
BENCHMARK(BM_RecordLookup)->Arg(1024)->Arg(16384)->Arg(131072);

void BM_Touch(benchmark::State& state) {
  HitRateCurveOptions options;
  options.pool_blocks = state.range(0);
  HitRateCurveRecorder recorder(options);
  const std::vector<BlockHash> stream = ZipfStream(options.pool_blocks, 1 << 20);
  size_t i = 0;
  for (auto _ : state) recorder.Touch(stream[i++ & (stream.size() - 1)]);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Touch)->Arg(1024)->Arg(16384)->Arg(131072);

}  // namespace
}  // namespace kvpool::manager

BENCHMARK_MAIN();
