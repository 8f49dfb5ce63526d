#include "engine/paged_attention_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <limits>
#include <vector>

namespace kvpool {
namespace {

inline float Dot(const float* __restrict a, const float* __restrict b, int32_t n) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int32_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

// e^x for the softmax, vectorizable (std::exp is a scalar libm call: at context
// 1000 it cost more than the dot products). Cephes-style: x = n ln2 + r with
// |r| <= ln2 / 2, e^r by a degree-6 polynomial, 2^n through the exponent bits.
// Relative error below 2e-7 on [-87, 88]; inputs here are <= 0 (max subtracted).
inline float FastExp(float x) {
  x = std::max(x, -87.0f);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &p, sizeof(bits));
  bits += static_cast<int32_t>(n) << 23;
  std::memcpy(&p, &bits, sizeof(bits));
  return p;
}

inline void Axpy(float alpha, const float* __restrict x, float* __restrict y, int32_t n) {
#pragma omp simd
  for (int32_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// Tokens per partition: a query's context is cut into partitions processed as
// independent tasks (flash-decoding), so that even one sequence at batch 1 keeps every
// thread busy, and each task streams whole token rows ([num_kv_heads][head_dim],
// contiguous in the pool) instead of striding through one head at a time.
constexpr int32_t kPartitionTokens = 128;

// Partial softmax state of one (query, partition): per query head the running max,
// the sum of exponentials and the unnormalised weighted sum of V.
struct Partial {
  float* max;  // [num_heads]
  float* sum;  // [num_heads]
  float* acc;  // [num_heads][head_dim]
};

// kHeadDim > 0 fixes the head size at compile time (fully unrolled vector loops);
// 0 reads it from the geometry.
template <int32_t kHeadDim>
void AttendPartition(const float* q, const float* k_region, const float* v_region,
                     const PoolGeometry& g, const AttentionQuery& query, int32_t begin, int32_t end,
                     int32_t num_heads, float scale, Partial part) {
  const int32_t d = kHeadDim > 0 ? kHeadDim : g.head_dim, bs = g.block_size, n = end - begin;
  const int32_t group = num_heads / g.num_kv_heads;
  thread_local std::vector<float> scores;  // [num_heads][n]
  scores.resize(static_cast<size_t>(num_heads) * n);
  std::fill(part.max, part.max + num_heads, -std::numeric_limits<float>::infinity());
  // Pass 1: every head's scores, one token row at a time.
  for (int32_t t = begin; t < end; ++t) {
    const float* k = k_region + int64_t{query.block_table[t / bs]} * g.block_elems() +
                     int64_t{t % bs} * g.token_elems();
    for (int32_t h = 0; h < num_heads; ++h) {
      const float sc = Dot(q + int64_t{h} * d, k + int64_t{h / group} * d, d) * scale;
      scores[static_cast<size_t>(h) * n + (t - begin)] = sc;
      part.max[h] = std::max(part.max[h], sc);
    }
  }
  for (int32_t h = 0; h < num_heads; ++h) {
    float* row = scores.data() + static_cast<size_t>(h) * n;
    const float mx = part.max[h];
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int32_t i = 0; i < n; ++i) {
      row[i] = FastExp(row[i] - mx);
      sum += row[i];
    }
    part.sum[h] = sum;
  }
  // Pass 2: weighted V, again row by row.
  std::fill(part.acc, part.acc + int64_t{num_heads} * d, 0.f);
  for (int32_t t = begin; t < end; ++t) {
    const float* v = v_region + int64_t{query.block_table[t / bs]} * g.block_elems() +
                     int64_t{t % bs} * g.token_elems();
    for (int32_t h = 0; h < num_heads; ++h) {
      Axpy(scores[static_cast<size_t>(h) * n + (t - begin)], v + int64_t{h / group} * d,
           part.acc + int64_t{h} * d, d);
    }
  }
}

}  // namespace

void PagedAttentionCpu(const float* q, int64_t q_row_stride, float* out, const float* k_region,
                       const float* v_region, const PoolGeometry& geometry,
                       const AttentionQuery* queries, int64_t num_queries, int32_t num_heads,
                       float scale) {
  const int32_t d = geometry.head_dim;
  // Task list: (query, partition), with each query's first task index.
  std::vector<int64_t> first_task(num_queries + 1, 0);
  for (int64_t i = 0; i < num_queries; ++i) {
    const int32_t parts = (queries[i].context_len + kPartitionTokens - 1) / kPartitionTokens;
    first_task[i + 1] = first_task[i] + parts;
  }
  const int64_t tasks = first_task[num_queries];
  const int64_t stride = int64_t{num_heads} * (d + 2);
  thread_local std::vector<float> partials;
  partials.resize(static_cast<size_t>(tasks * stride));
  float* base = partials.data();
  auto partial_of = [&](int64_t task) {
    float* p = base + task * stride;
    return Partial{p, p + num_heads, p + 2 * num_heads};
  };
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    int64_t i =
        std::upper_bound(first_task.begin(), first_task.end(), begin) - first_task.begin() - 1;
    for (int64_t task = begin; task < end; ++task) {
      while (task >= first_task[i + 1]) ++i;
      const int32_t from = static_cast<int32_t>(task - first_task[i]) * kPartitionTokens;
      const int32_t to = std::min(queries[i].context_len, from + kPartitionTokens);
      auto* attend = d == 64    ? &AttendPartition<64>
                     : d == 128 ? &AttendPartition<128>
                                : &AttendPartition<0>;
      attend(q + i * q_row_stride, k_region, v_region, geometry, queries[i], from, to, num_heads,
             scale, partial_of(task));
    }
  });
  // Merge the partitions of each query: rescale to the global max, then normalise.
  at::parallel_for(0, num_queries, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      for (int32_t h = 0; h < num_heads; ++h) {
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t t = first_task[i]; t < first_task[i + 1]; ++t)
          mx = std::max(mx, partial_of(t).max[h]);
        float* o = out + (i * num_heads + h) * d;
        std::fill(o, o + d, 0.f);
        float total = 0.f;
        for (int64_t t = first_task[i]; t < first_task[i + 1]; ++t) {
          const Partial p = partial_of(t);
          const float w = FastExp(p.max[h] - mx);
          total += w * p.sum[h];
          Axpy(w, p.acc + int64_t{h} * d, o, d);
        }
        const float inv = 1.f / total;
        for (int32_t x = 0; x < d; ++x) o[x] *= inv;
      }
    }
  });
}

}  // namespace kvpool
