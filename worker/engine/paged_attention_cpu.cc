// The CPU paged-attention kernel: see paged_attention_cpu.h. Reads K/V through block
// tables straight from the pool, a query's context cut into partitions (flash-decoding)
// whose partial softmax states are merged at the end; it never writes the pool. Every
// pool dtype is read in place (int8 and fp8 before their scale is applied: a K scale
// multiplies the finished dot product, a V scale the softmax weight), so a narrower pool
// costs a few conversion instructions per 16 elements and saves the bytes. This file:
// the portable partition kernel, the choice of kernel, the prompt tiles' tasks and the
// merge; the AVX-512 kernels are in paged_attention_cpu_avx512.cc, the prompt tile
// kernel in paged_attention_cpu_prefill.cc.
#include "engine/paged_attention_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <limits>
#include <type_traits>
#include <vector>

#include "engine/paged_attention_cpu_kernels.h"

namespace kvpool {
namespace {

using cpu_attention::AttendFn;
using cpu_attention::AttendTileFn;
using cpu_attention::Bf16DotAttention;
using cpu_attention::FastExp;
using cpu_attention::Fp8;
using cpu_attention::kPartitionTokens;
using cpu_attention::kTileQueries;
using cpu_attention::TileTask;
// A partition's fixed cost (its query's conversion, the softmax of its pieces, the
// merge), in tokens of context, for splitting the work between threads.
constexpr int64_t kTaskCostTokens = 8;
// Positions of a task whose K rows are asked for before it starts: the AVX-512 kernels'
// group (paged_attention_cpu_avx512.cc).
constexpr int32_t kFirstRows = 16;
using cpu_attention::Partial;
using cpu_attention::PickAttendAvx512;
using cpu_attention::RowAt;
using cpu_attention::SoftmaxPieces;

inline float ToFloat(float x) { return x; }
inline float ToFloat(c10::BFloat16 x) { return static_cast<float>(x); }
inline float ToFloat(c10::Half x) { return static_cast<float>(x); }
inline float ToFloat(int8_t x) { return static_cast<float>(x); }
inline float ToFloat(Fp8 x) { return DecodeFp8E4m3(x.bits); }

template <typename T>
inline float Dot(const float* __restrict a, const T* __restrict b, int32_t n) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int32_t i = 0; i < n; ++i) acc += a[i] * ToFloat(b[i]);
  return acc;
}

template <typename T>
inline void Axpy(float alpha, const T* __restrict x, float* __restrict y, int32_t n) {
#pragma omp simd
  for (int32_t i = 0; i < n; ++i) y[i] += alpha * ToFloat(x[i]);
}

// kHeadDim > 0 fixes the head size at compile time (fully unrolled vector loops);
// 0 reads it from the geometry. T: the pool's element type.
template <typename T, int32_t kHeadDim>
void AttendPartition(const float* q, const char* k_region, const char* v_region,
                     const PoolGeometry& g, const AttentionQuery& query, int32_t begin, int32_t end,
                     int32_t num_heads, float scale, Partial part) {
  const int32_t d = kHeadDim > 0 ? kHeadDim : g.head_dim, n = end - begin;
  const int32_t group = num_heads / g.num_kv_heads;
  const RowAt at{g, query.block_table};
  constexpr bool kScaled = std::is_same_v<T, int8_t> || std::is_same_v<T, Fp8>;
  thread_local std::vector<float> scores;  // [num_heads][n]
  scores.resize(static_cast<size_t>(num_heads) * n);
  // Pass 1: every head's scores, one token row at a time.
  for (int32_t t = begin; t < end; ++t) {
    const T* k = reinterpret_cast<const T*>(k_region + at.row(t));
    for (int32_t h = 0; h < num_heads; ++h) {
      float sc = Dot(q + int64_t{h} * d, k + int64_t{h / group} * d, d) * scale;
      if (kScaled) sc *= at.scale(k_region, t, h / group);
      scores[static_cast<size_t>(h) * n + (t - begin)] = sc;
    }
  }
  SoftmaxPieces(scores.data(), n, num_heads, part);
  // Pass 2: weighted V, again row by row.
  std::fill(part.acc, part.acc + int64_t{num_heads} * d, 0.f);
  for (int32_t t = begin; t < end; ++t) {
    const T* v = reinterpret_cast<const T*>(v_region + at.row(t));
    for (int32_t h = 0; h < num_heads; ++h) {
      float w = scores[static_cast<size_t>(h) * n + (t - begin)];
      if (kScaled) w *= at.scale(v_region, t, h / group);
      Axpy(w, v + int64_t{h / group} * d, part.acc + int64_t{h} * d, d);
    }
  }
}

// The partition kernel for this dtype, head size and CPU (KVPOOL_CPU_ATTENTION=generic:
// the portable loop, for comparisons and for CI's portable run).
bool Avx512Attention() {
  static const bool avx512 = [] {
    const char* choice = std::getenv("KVPOOL_CPU_ATTENTION");
    return __builtin_cpu_supports("avx512f") != 0 &&
           (choice == nullptr || std::strcmp(choice, "generic") != 0);
  }();
  return avx512;
}

template <typename T>
AttendFn PickPortable(int32_t head_dim) {
  return head_dim == 64    ? &AttendPartition<T, 64>
         : head_dim == 128 ? &AttendPartition<T, 128>
                           : &AttendPartition<T, 0>;
}

AttendFn PickAttend(KvDtype dtype, int32_t head_dim) {
  if (Avx512Attention()) {
    if (AttendFn fast = PickAttendAvx512(dtype, head_dim)) return fast;
  }
  switch (dtype) {
    case KvDtype::kFloat16:
      return PickPortable<c10::Half>(head_dim);
    case KvDtype::kBFloat16:
      return PickPortable<c10::BFloat16>(head_dim);
    case KvDtype::kInt8:
      return PickPortable<int8_t>(head_dim);
    case KvDtype::kFp8E4m3:
      return PickPortable<Fp8>(head_dim);
    case KvDtype::kFloat32:
      break;
  }
  return PickPortable<float>(head_dim);
}

// Runs [begin, end) of tasks on the intra-op threads, each thread a contiguous run
// holding its share of the work (work_before[task]: the work of the tasks before it),
// not of the tasks: a task can hold 1 token or thousands.
template <typename Run>
void ParallelByWork(const int64_t* work_before, int64_t tasks, const Run& run) {
  const int64_t total = work_before[tasks];
  const int64_t shares = std::min<int64_t>(at::get_num_threads(), tasks);
  if (shares <= 0) return;
  auto first_of_share = [&](int64_t share) {
    const int64_t target = total * share / shares;
    return std::lower_bound(work_before, work_before + tasks, target) - work_before;
  };
  at::parallel_for(0, shares, 1, [&](int64_t share_begin, int64_t share_end) {
    const int64_t begin = first_of_share(share_begin), end = first_of_share(share_end);
    if (begin < end) run(begin, end);
  });
}

// A prompt's queries (runs of at least a tile: the same block table, each query one
// position more than the one before) through the tile kernel `tile`; marks those
// queries in `tiled` for the one-query path to skip.
void AttendPromptTiles(AttendTileFn tile, const float* q, int64_t q_row_stride, float* out,
                       const char* k_region, const char* v_region, const PoolGeometry& g,
                       const AttentionQuery* queries, int64_t num_queries, int32_t num_heads,
                       float scale, std::vector<uint8_t>& tiled) {
  thread_local std::vector<TileTask> tasks;
  thread_local std::vector<int64_t> work_before;
  tasks.clear();
  work_before.assign(1, 0);
  const int32_t d = g.head_dim, group = num_heads / g.num_kv_heads;
  const int64_t out_stride = int64_t{num_heads} * d;
  for (int64_t i = 0; i < num_queries;) {
    int64_t j = i + 1;
    while (j < num_queries && queries[j].block_table == queries[i].block_table &&
           queries[j].context_len == queries[j - 1].context_len + 1) {
      ++j;
    }
    if (j - i >= kTileQueries) {
      for (int64_t t = i; t < j; t += kTileQueries) {
        const auto count = static_cast<int32_t>(std::min<int64_t>(kTileQueries, j - t));
        std::fill(tiled.begin() + t, tiled.begin() + t + count, uint8_t{1});
        for (int32_t h = 0; h < num_heads; ++h) {
          tasks.push_back({q + t * q_row_stride, q_row_stride, out + t * out_stride, out_stride,
                           queries[t].block_table, queries[t].context_len, count, h, h / group});
          work_before.push_back(work_before.back() + queries[t].context_len + count +
                                kTaskCostTokens);
        }
      }
    }
    i = j;
  }
  const TileTask* all = tasks.data();
  ParallelByWork(work_before.data(), static_cast<int64_t>(tasks.size()),
                 [&](int64_t begin, int64_t end) {
                   for (int64_t t = begin; t < end; ++t) tile(all[t], g, k_region, v_region, scale);
                 });
}

}  // namespace

bool PagedAttentionCpuBf16Dot(int32_t head_dim) {
  return Avx512Attention() && Bf16DotAttention() && (head_dim == 64 || head_dim == 128);
}

void PagedAttentionCpu(const float* q, int64_t q_row_stride, float* out, const void* k_region,
                       const void* v_region, const PoolGeometry& geometry,
                       const AttentionQuery* queries, int64_t num_queries, int32_t num_heads,
                       float scale) {
  const int32_t d = geometry.head_dim;
  const auto* k_bytes = static_cast<const char*>(k_region);
  const auto* v_bytes = static_cast<const char*>(v_region);
  // A prompt's queries first, in tiles where the CPU and dtype have a tile kernel.
  thread_local std::vector<uint8_t> tiled;
  tiled.assign(static_cast<size_t>(num_queries), 0);
  if (const AttendTileFn tile =
          Avx512Attention() ? cpu_attention::PickAttendTile(geometry.dtype, d) : nullptr) {
    AttendPromptTiles(tile, q, q_row_stride, out, k_bytes, v_bytes, geometry, queries, num_queries,
                      num_heads, scale, tiled);
  }
  // The other queries. Task list: (query, partition), with each query's first task index.
  std::vector<int64_t> first_task(num_queries + 1, 0);
  for (int64_t i = 0; i < num_queries; ++i) {
    const int32_t parts =
        tiled[i] ? 0 : (queries[i].context_len + kPartitionTokens - 1) / kPartitionTokens;
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
  const AttendFn attend = PickAttend(geometry.dtype, d);
  // Each thread takes a contiguous run of tasks holding its share of the tokens (plus
  // a task's fixed cost), not of the tasks: a partition can hold 1 token or 128, and a
  // prompt's queries range from 1 token of context to all of them. Splitting by task
  // count left one of two threads waiting at the end of the step.
  thread_local std::vector<int64_t> work_before;  // [task]: work of the tasks before it
  work_before.resize(static_cast<size_t>(tasks) + 1);
  work_before[0] = 0;
  for (int64_t i = 0, task = 0; i < num_queries; ++i) {
    for (; task < first_task[i + 1]; ++task) {
      const int64_t from = (task - first_task[i]) * kPartitionTokens;
      const int64_t tokens = std::min<int64_t>(queries[i].context_len - from, kPartitionTokens);
      work_before[task + 1] = work_before[task] + tokens + kTaskCostTokens;
    }
  }
  // The K rows of a task's first group of positions, asked for into L2: a kernel asks
  // for each group's rows a group ahead, so without this its first group is waited for
  // (the rows of a group lie in one or two blocks anywhere in the pool).
  const int64_t row_bytes = geometry.token_stride_bytes();
  auto fetch_first_rows = [&](int64_t task, int64_t i) {
    while (task >= first_task[i + 1]) ++i;
    const int32_t from = static_cast<int32_t>(task - first_task[i]) * kPartitionTokens;
    const int32_t to = std::min(queries[i].context_len, from + kFirstRows);
    const RowAt at{geometry, queries[i].block_table};
    for (int32_t t = from; t < to; ++t) {
      const char* row = k_bytes + at.row(t);
      for (int64_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(row + b, 0, 2);
    }
  };
  ParallelByWork(work_before.data(), tasks, [&](int64_t begin, int64_t end) {
    int64_t i =
        std::upper_bound(first_task.begin(), first_task.end(), begin) - first_task.begin() - 1;
    fetch_first_rows(begin, i);
    for (int64_t task = begin; task < end; ++task) {
      while (task >= first_task[i + 1]) ++i;
      if (task + 1 < end) fetch_first_rows(task + 1, i);
      const int32_t from = static_cast<int32_t>(task - first_task[i]) * kPartitionTokens;
      const int32_t to = std::min(queries[i].context_len, from + kPartitionTokens);
      attend(q + i * q_row_stride, k_bytes, v_bytes, geometry, queries[i], from, to, num_heads,
             scale, partial_of(task));
    }
  });
  // Merge the partitions of each query: rescale to the global max, then normalise.
  at::parallel_for(0, num_queries, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (first_task[i] == first_task[i + 1]) continue;  // a tile's query: done above
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
