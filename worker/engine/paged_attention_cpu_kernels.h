// What the CPU paged-attention kernels share (paged_attention_cpu.cc: the portable
// kernel, the dispatch and the merge of partitions; paged_attention_cpu_avx512.cc: the
// AVX-512 kernels): how a position is found in the pool, the partial softmax state of a
// partition, and the kernel signature. Internal to those two files.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/kv_layout.h"
#include "engine/kv_quant.h"
#include "engine/paged_attention_cpu.h"

namespace kvpool::cpu_attention {

// The pool's element types as the kernels see them; Fp8 wraps the e4m3 code.
struct Fp8 {
  uint8_t bits;
};
// Where position t of a query's context lives in a region: its token row (bytes from
// the region's start) and its scales (for the scaled dtypes).
struct RowAt {
  const PoolGeometry& g;
  const int32_t* table;
  int64_t row(int32_t t) const {
    return int64_t{table[t / g.block_size]} * g.block_stride_bytes() +
           int64_t{t % g.block_size} * g.token_stride_bytes();
  }
  // The scale of KV head `head` at position t of `region` (1 when unscaled).
  float scale(const void* region, int32_t t, int32_t head) const {
    return KvScale(region, g, table[t / g.block_size], t % g.block_size, head);
  }
};

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

// Turns each head's row of n scores into exponentials after the row's max, and keeps
// that max and the sum for the merge.
inline void SoftmaxPieces(float* scores, int32_t n, int32_t num_heads, Partial part) {
  for (int32_t h = 0; h < num_heads; ++h) {
    float* row = scores + static_cast<size_t>(h) * n;
    const float mx = *std::max_element(row, row + n);
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int32_t t = 0; t < n; ++t) {
      row[t] = FastExp(row[t] - mx);
      sum += row[t];
    }
    part.max[h] = mx;
    part.sum[h] = sum;
  }
}

// One partition [begin, end) of one query: fills `part`.
using AttendFn = void (*)(const float* q, const char* k_region, const char* v_region,
                          const PoolGeometry& g, const AttentionQuery& query, int32_t begin,
                          int32_t end, int32_t num_heads, float scale, Partial part);

// The AVX-512 kernel for this dtype and head size (nullptr: none; the caller decides
// whether AVX-512 may be used).
AttendFn PickAttendAvx512(KvDtype dtype, int32_t head_dim);

// A prompt's queries in tiles (paged_attention_cpu_prefill.cc): `count` (up to
// kTileQueries) consecutive queries of one sequence, the first seeing positions
// [0, first_context), each next one position more; one query head per task.
constexpr int32_t kTileQueries = 16;
struct TileTask {
  const float* q;  // the first query's row
  int64_t q_row_stride;
  float* out;  // the first query's output row
  int64_t out_row_stride;
  const int32_t* block_table;
  int32_t first_context;
  int32_t count;
  int32_t head, kv_head;
};
using AttendTileFn = void (*)(const TileTask& task, const PoolGeometry& g, const char* k_region,
                              const char* v_region, float scale);
// The tile kernel for this dtype and head size (bf16 with AVX512-BF16, head sizes 64 and
// 128), or nullptr; the caller decides whether AVX-512 may be used.
AttendTileFn PickAttendTile(KvDtype dtype, int32_t head_dim);
// Whether bf16 K/V is read with bf16 dot products when AVX-512 is used (AVX512-BF16;
// KVPOOL_CPU_BF16=convert says no, for tests and comparisons).
bool Bf16DotAttention();

}  // namespace kvpool::cpu_attention
