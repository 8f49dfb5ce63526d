// kvpool-sampler-bench (Google Benchmark): greedy sampling's argmax over one row of
// logits, the sampler's vectorized ArgmaxLogit against std::max_element (what it
// replaced), for gpt2's vocabulary (50257) and Llama's (32000), over 1 row (in L2) and
// 32 rows one after another (a batch-32 step's logits, 6.4 MB for gpt2). One thread,
// as each of the engine's threads samples its own rows. Counter: rows per second.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "engine/sampler.h"

namespace kvpool {
namespace {

std::vector<float> Logits(int64_t vocab, int64_t rows) {
  std::vector<float> l(static_cast<size_t>(vocab * rows));
  std::mt19937 rng(1);
  std::normal_distribution<float> logit(0.f, 3.f);
  for (float& x : l) x = logit(rng);
  return l;
}

template <bool kVectorized>
void BM_Argmax(benchmark::State& state) {
  const int64_t vocab = state.range(0), rows = state.range(1);
  const std::vector<float> l = Logits(vocab, rows);
  int64_t sum = 0;
  for (auto _ : state) {
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = l.data() + r * vocab;
      sum += kVectorized ? ArgmaxLogit(row, vocab) : std::max_element(row, row + vocab) - row;
    }
    benchmark::DoNotOptimize(sum);
  }
  state.counters["rows/s"] = benchmark::Counter(static_cast<double>(state.iterations() * rows),
                                                benchmark::Counter::kIsRate);
}

void Shapes(benchmark::internal::Benchmark* b) {
  for (int64_t vocab : {50257, 32000}) {
    for (int64_t rows : {1, 32}) b->Args({vocab, rows});
  }
}

BENCHMARK(BM_Argmax<true>)->Name("BM_ArgmaxLogit")->Apply(Shapes);
BENCHMARK(BM_Argmax<false>)->Name("BM_StdMaxElement")->Apply(Shapes);

}  // namespace
}  // namespace kvpool

BENCHMARK_MAIN();
