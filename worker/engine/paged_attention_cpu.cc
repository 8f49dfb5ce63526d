#include "engine/paged_attention_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
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

inline void Axpy(float alpha, const float* __restrict x, float* __restrict y, int32_t n) {
#pragma omp simd
  for (int32_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// One query token against one KV head, for every query head of that head's group.
void AttendGroup(const float* q, float* out, const float* k_region, const float* v_region,
                 const PoolGeometry& g, const AttentionQuery& query, int32_t kv_head,
                 int32_t group, float scale, std::vector<float>& scores) {
  const int32_t d = g.head_dim, bs = g.block_size, ctx = query.context_len;
  const int64_t token_stride = g.token_elems();
  scores.resize(static_cast<size_t>(group) * ctx);
  thread_local std::vector<float> max_buf;
  max_buf.assign(group, -std::numeric_limits<float>::infinity());
  float* maxes = max_buf.data();

  // Pass 1: scores, block by block.
  for (int32_t start = 0, blk = 0; start < ctx; start += bs, ++blk) {
    const int32_t n = std::min(bs, ctx - start);
    const float* k = k_region + int64_t{query.block_table[blk]} * g.block_elems() + kv_head * d;
    for (int32_t s = 0; s < n; ++s, k += token_stride) {
      for (int32_t h = 0; h < group; ++h) {
        const float sc = Dot(q + int64_t{h} * d, k, d) * scale;
        scores[static_cast<size_t>(h) * ctx + start + s] = sc;
        maxes[h] = std::max(maxes[h], sc);
      }
    }
  }
  // Softmax numerators and sums.
  for (int32_t h = 0; h < group; ++h) {
    float* row = scores.data() + static_cast<size_t>(h) * ctx;
    float sum = 0.f;
    for (int32_t t = 0; t < ctx; ++t) {
      row[t] = std::exp(row[t] - maxes[h]);
      sum += row[t];
    }
    const float inv = 1.f / sum;
    for (int32_t t = 0; t < ctx; ++t) row[t] *= inv;
    std::fill(out + int64_t{h} * d, out + int64_t{h + 1} * d, 0.f);
  }
  // Pass 2: weighted sum of V.
  for (int32_t start = 0, blk = 0; start < ctx; start += bs, ++blk) {
    const int32_t n = std::min(bs, ctx - start);
    const float* v = v_region + int64_t{query.block_table[blk]} * g.block_elems() + kv_head * d;
    for (int32_t s = 0; s < n; ++s, v += token_stride) {
      for (int32_t h = 0; h < group; ++h) {
        Axpy(scores[static_cast<size_t>(h) * ctx + start + s], v, out + int64_t{h} * d, d);
      }
    }
  }
}

}  // namespace

void PagedAttentionCpu(const float* q, int64_t q_row_stride, float* out, const float* k_region,
                       const float* v_region, const PoolGeometry& geometry,
                       const AttentionQuery* queries, int64_t num_queries, int32_t num_heads,
                       float scale) {
  const int32_t kv_heads = geometry.num_kv_heads;
  const int32_t group = num_heads / kv_heads;
  const int32_t d = geometry.head_dim;
  const int64_t tasks = num_queries * kv_heads;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task / kv_heads;
      const int32_t kvh = static_cast<int32_t>(task % kv_heads);
      const int64_t head0 = int64_t{kvh} * group;
      AttendGroup(q + i * q_row_stride + head0 * d, out + i * num_heads * d + head0 * d, k_region,
                  v_region, geometry, queries[i], kvh, group, scale, scores);
    }
  });
}

}  // namespace kvpool
