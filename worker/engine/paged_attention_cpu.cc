// The CPU paged-attention kernel: see paged_attention_cpu.h. Reads K/V through block
// tables straight from the pool, one pass per (query token, KV head) with an online
// softmax; it never writes the pool. Every pool dtype is read in place and widened to
// fp32 in registers (fp16 and bf16 exactly, int8 and fp8 before their scale is applied:
// a K scale multiplies the finished dot product, a V scale the softmax weight), so a
// narrower pool costs a few conversion instructions per 16 elements and saves the bytes.
#include "engine/paged_attention_cpu.h"

// GCC 12's AVX-512 headers build some intrinsics on _mm512_undefined_*(), which
// -Wuninitialized flags wherever they inline (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <limits>
#include <type_traits>
#include <vector>

#include "engine/kv_quant.h"

namespace kvpool {
namespace {

// The pool's element types as the kernels see them; Fp8 wraps the e4m3 code.
struct Fp8 {
  uint8_t bits;
};
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

template <typename T>
inline void Axpy(float alpha, const T* __restrict x, float* __restrict y, int32_t n) {
#pragma omp simd
  for (int32_t i = 0; i < n; ++i) y[i] += alpha * ToFloat(x[i]);
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
  std::fill(part.max, part.max + num_heads, -std::numeric_limits<float>::infinity());
  // Pass 1: every head's scores, one token row at a time.
  for (int32_t t = begin; t < end; ++t) {
    const T* k = reinterpret_cast<const T*>(k_region + at.row(t));
    for (int32_t h = 0; h < num_heads; ++h) {
      float sc = Dot(q + int64_t{h} * d, k + int64_t{h / group} * d, d) * scale;
      if (kScaled) sc *= at.scale(k_region, t, h / group);
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
    const T* v = reinterpret_cast<const T*>(v_region + at.row(t));
    for (int32_t h = 0; h < num_heads; ++h) {
      float w = scores[static_cast<size_t>(h) * n + (t - begin)];
      if (kScaled) w *= at.scale(v_region, t, h / group);
      Axpy(w, v + int64_t{h / group} * d, part.acc + int64_t{h} * d, d);
    }
  }
}

#define KVPOOL_AVX512 __attribute__((target("avx512f,avx2,fma")))

// Lane i of the result: the sum of the 16 lanes of a[i] (a transpose-and-add tree:
// 16 dot products finished with 30 shuffles and adds instead of 16 full reductions).
KVPOOL_AVX512 inline __m512 SumEachOf16(const __m512* a) {
  __m512 b[8], c[4];
  for (int i = 0; i < 8; ++i) {
    b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]),
                         _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
  }
  for (int i = 0; i < 4; ++i) {
    const __m512d x = _mm512_castps_pd(b[2 * i]), y = _mm512_castps_pd(b[2 * i + 1]);
    c[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  // c[i], 128-bit lane j: lane j's partial sums of a[4i], a[4i+1], a[4i+2], a[4i+3].
  const __m512 d0 =
      _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88), _mm512_shuffle_f32x4(c[0], c[1], 0xDD));
  const __m512 d1 =
      _mm512_add_ps(_mm512_shuffle_f32x4(c[2], c[3], 0x88), _mm512_shuffle_f32x4(c[2], c[3], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(d0, d1, 0x88), _mm512_shuffle_f32x4(d0, d1, 0xDD));
}

// 16 pool elements widened to fp32.
KVPOOL_AVX512 inline __m512 Load16(const float* p) { return _mm512_loadu_ps(p); }
KVPOOL_AVX512 inline __m512 Load16(const c10::BFloat16* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
KVPOOL_AVX512 inline __m512 Load16(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
KVPOOL_AVX512 inline __m512 Load16(const int8_t* p) {
  return _mm512_cvtepi32_ps(
      _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
// e4m3 as DecodeFp8E4m3 does it: magnitude bits to fp32's exponent and mantissa
// fields, sign to bit 31, times 2^120.
KVPOOL_AVX512 inline __m512 Load16(const Fp8* p) {
  const __m512i x = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m512i magnitude = _mm512_slli_epi32(_mm512_and_si512(x, _mm512_set1_epi32(0x7f)), 20);
  const __m512i sign = _mm512_slli_epi32(_mm512_and_si512(x, _mm512_set1_epi32(0x80)), 24);
  return _mm512_mul_ps(_mm512_castsi512_ps(_mm512_or_si512(magnitude, sign)),
                       _mm512_set1_ps(1.329227995784916e36f));
}

// The same partition with AVX-512, in groups of 16 positions: for each group, every
// head's 16 scores (a query head in registers while its 16 K vectors stream past,
// finished 16 at a time), later every head's weighted V of the group. A group's token
// rows ([num_kv_heads][head_dim] each) are read while they sit in L1, so the pool is
// read row after row rather than one head's slice of every row per pass.
template <typename T, int32_t kHeadDim>
KVPOOL_AVX512 void AttendPartitionAvx512(const float* q, const char* k_region, const char* v_region,
                                         const PoolGeometry& g, const AttentionQuery& query,
                                         int32_t begin, int32_t end, int32_t num_heads, float scale,
                                         Partial part) {
  constexpr int kVecs = kHeadDim / 16;
  constexpr int32_t kGroup = 16;
  constexpr bool kScaled = std::is_same_v<T, int8_t> || std::is_same_v<T, Fp8>;
  const int32_t n = end - begin, group = num_heads / g.num_kv_heads;
  const RowAt at{g, query.block_table};
  thread_local std::vector<float> scores;              // [num_heads][n]
  thread_local std::vector<int64_t> rows;              // each position's row, bytes into a region
  thread_local std::vector<float> k_scales, v_scales;  // [num_kv_heads][n]
  scores.resize(static_cast<size_t>(num_heads) * n);
  rows.resize(static_cast<size_t>(n));
  for (int32_t t = begin; t < end; ++t) rows[t - begin] = at.row(t);
  if (kScaled) {
    k_scales.resize(static_cast<size_t>(g.num_kv_heads) * n);
    v_scales.resize(static_cast<size_t>(g.num_kv_heads) * n);
    for (int32_t kv = 0; kv < g.num_kv_heads; ++kv) {
      for (int32_t t = begin; t < end; ++t) {
        k_scales[static_cast<size_t>(kv) * n + (t - begin)] = at.scale(k_region, t, kv) * scale;
        v_scales[static_cast<size_t>(kv) * n + (t - begin)] = at.scale(v_region, t, kv);
      }
    }
  }
  auto k_row = [&](int32_t i, int64_t head) {
    return reinterpret_cast<const T*>(k_region + rows[i]) + head;
  };
  // A KV head's slice of the rows of positions [i, i + kGroup): asked for from memory
  // one group ahead. The loop's own loads leave too few cache misses in flight to use
  // the memory's bandwidth (measured: ~17 GB/s of ~35 at batch 32 on Zen 4).
  constexpr int kSliceBytes = kHeadDim * static_cast<int>(sizeof(T));
  auto prefetch = [&](const char* region, int32_t i, int64_t head, auto hint) {
    const int32_t stop = std::min(n, i + kGroup);
    for (int32_t j = i; j < stop; ++j) {
      const char* p = region + rows[j] + head * static_cast<int64_t>(sizeof(T));
      for (int b = 0; b < kSliceBytes; b += 64) _mm_prefetch(p + b, decltype(hint)::value);
    }
  };
  using ToL1 = std::integral_constant<_mm_hint, _MM_HINT_T0>;
  using ToL2 = std::integral_constant<_mm_hint, _MM_HINT_T1>;
  for (int32_t kv = 0; kv < g.num_kv_heads; ++kv)
    prefetch(k_region, 0, int64_t{kv} * kHeadDim, ToL1{});
  // Pass 1: scores, 16 positions by every head at a time; meanwhile the next group's K
  // comes to L1 and this group's V to L2, for pass 2.
  const __m512 vscale = _mm512_set1_ps(scale);
  for (int32_t i = 0; i < n; i += kGroup) {
    const int32_t m = std::min(kGroup, n - i);
    for (int32_t h = 0; h < num_heads; ++h) {
      const int32_t kv_head = h / group;
      const int64_t head = int64_t{kv_head} * kHeadDim;
      if (h % group == 0) {
        if (i + kGroup < n) prefetch(k_region, i + kGroup, head, ToL1{});
        prefetch(v_region, i, head, ToL2{});
      }
      __m512 qv[kVecs];
      for (int v = 0; v < kVecs; ++v) qv[v] = _mm512_loadu_ps(q + int64_t{h} * kHeadDim + 16 * v);
      auto dot = [&](int32_t j) {
        const T* k = k_row(j, head);
        __m512 acc = _mm512_mul_ps(qv[0], Load16(k));
        for (int v = 1; v < kVecs; ++v) acc = _mm512_fmadd_ps(qv[v], Load16(k + 16 * v), acc);
        return acc;
      };
      float* out = scores.data() + static_cast<size_t>(h) * n + i;
      const float* ks = kScaled ? k_scales.data() + static_cast<size_t>(kv_head) * n + i : nullptr;
      if (m == kGroup) {
        __m512 acc[kGroup];
        for (int j = 0; j < kGroup; ++j) acc[j] = dot(i + j);
        _mm512_storeu_ps(out,
                         _mm512_mul_ps(SumEachOf16(acc), kScaled ? _mm512_loadu_ps(ks) : vscale));
      } else {
        for (int32_t j = 0; j < m; ++j) {
          out[j] = _mm512_reduce_add_ps(dot(i + j)) * (kScaled ? ks[j] : scale);
        }
      }
    }
  }
  // Softmax pieces per head: the partition's max and sum of exponentials.
  for (int32_t h = 0; h < num_heads; ++h) {
    float* row = scores.data() + static_cast<size_t>(h) * n;
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
  // Pass 2: weighted V, 16 positions by every head at a time; a head's sum stays in
  // registers over its 16 positions.
  std::fill(part.acc, part.acc + int64_t{num_heads} * kHeadDim, 0.f);
  for (int32_t i = 0; i < n; i += kGroup) {
    const int32_t m = std::min(kGroup, n - i);
    for (int32_t h = 0; h < num_heads; ++h) {
      const int32_t kv_head = h / group;
      const int64_t head = int64_t{kv_head} * kHeadDim;
      const float* w = scores.data() + static_cast<size_t>(h) * n + i;
      const float* vs = kScaled ? v_scales.data() + static_cast<size_t>(kv_head) * n + i : nullptr;
      float* acc = part.acc + int64_t{h} * kHeadDim;
      __m512 out[kVecs];
      for (int v = 0; v < kVecs; ++v) out[v] = _mm512_loadu_ps(acc + 16 * v);
      for (int32_t j = 0; j < m; ++j) {
        const T* vrow = reinterpret_cast<const T*>(v_region + rows[i + j]) + head;
        const __m512 wv = _mm512_set1_ps(kScaled ? w[j] * vs[j] : w[j]);
        for (int v = 0; v < kVecs; ++v) out[v] = _mm512_fmadd_ps(wv, Load16(vrow + 16 * v), out[v]);
      }
      for (int v = 0; v < kVecs; ++v) _mm512_storeu_ps(acc + 16 * v, out[v]);
    }
  }
}

using AttendFn = void (*)(const float*, const char*, const char*, const PoolGeometry&,
                          const AttentionQuery&, int32_t, int32_t, int32_t, float, Partial);

template <typename T>
AttendFn PickAttendFor(int32_t head_dim, bool avx512) {
  if (avx512 && head_dim == 64) return &AttendPartitionAvx512<T, 64>;
  if (avx512 && head_dim == 128) return &AttendPartitionAvx512<T, 128>;
  return head_dim == 64    ? &AttendPartition<T, 64>
         : head_dim == 128 ? &AttendPartition<T, 128>
                           : &AttendPartition<T, 0>;
}

// The partition kernel for this dtype, head size and CPU (KVPOOL_CPU_ATTENTION=generic:
// the portable loop, for comparisons and for CI's portable run).
AttendFn PickAttend(KvDtype dtype, int32_t head_dim) {
  static const bool avx512 = [] {
    const char* choice = std::getenv("KVPOOL_CPU_ATTENTION");
    return __builtin_cpu_supports("avx512f") != 0 &&
           (choice == nullptr || std::strcmp(choice, "generic") != 0);
  }();
  switch (dtype) {
    case KvDtype::kFloat16:
      return PickAttendFor<c10::Half>(head_dim, avx512);
    case KvDtype::kBFloat16:
      return PickAttendFor<c10::BFloat16>(head_dim, avx512);
    case KvDtype::kInt8:
      return PickAttendFor<int8_t>(head_dim, avx512);
    case KvDtype::kFp8E4m3:
      return PickAttendFor<Fp8>(head_dim, avx512);
    case KvDtype::kFloat32:
      break;
  }
  return PickAttendFor<float>(head_dim, avx512);
}

}  // namespace

void PagedAttentionCpu(const float* q, int64_t q_row_stride, float* out, const void* k_region,
                       const void* v_region, const PoolGeometry& geometry,
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
  const AttendFn attend = PickAttend(geometry.dtype, d);
  const auto* k_bytes = static_cast<const char*>(k_region);
  const auto* v_bytes = static_cast<const char*>(v_region);
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    int64_t i =
        std::upper_bound(first_task.begin(), first_task.end(), begin) - first_task.begin() - 1;
    for (int64_t task = begin; task < end; ++task) {
      while (task >= first_task[i + 1]) ++i;
      const int32_t from = static_cast<int32_t>(task - first_task[i]) * kPartitionTokens;
      const int32_t to = std::min(queries[i].context_len, from + kPartitionTokens);
      attend(q + i * q_row_stride, k_bytes, v_bytes, geometry, queries[i], from, to, num_heads,
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
