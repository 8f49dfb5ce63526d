// The AVX-512 CPU paged-attention kernels (see paged_attention_cpu.h and
// paged_attention_cpu_kernels.h): every pool dtype widened to fp32 in registers, and
// bf16 read with bf16 dot products where the CPU has them.
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "engine/paged_attention_cpu_kernels.h"

// GCC 12's AVX-512 headers build some intrinsics on _mm512_undefined_*(), which
// -Wuninitialized flags wherever they inline (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace kvpool::cpu_attention {
namespace {

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

// Positions per group in both kernels below.
constexpr int32_t kGroup = 16;

// Asks for one KV head's slice (`bytes` from `offset` in each token row) of the rows of
// positions [i, i + kGroup) of a partition of n, a group before the kernel reads them:
// the kernels' own loads leave too few cache misses in flight to use the memory's
// bandwidth (fp32 K/V, gpt2 batch 32 at context 600: 0.83x the step with this).
inline void PrefetchGroup(const char* region, const int64_t* rows, int32_t i, int32_t n,
                          int64_t offset, int bytes) {
  const int32_t stop = std::min(n, i + kGroup);
  for (int32_t j = i; j < stop; ++j) {
    const char* p = region + rows[j] + offset;
    for (int b = 0; b < bytes; b += 64) _mm_prefetch(p + b, _MM_HINT_T0);
  }
}

// During pass 1's group at i (of n positions), one KV head's slice of what is read
// next: the next group's K, or during the last group V's first (pass 2 starts there).
template <typename Prefetch>
inline void PrefetchAfter(const Prefetch& prefetch, const char* k_region, const char* v_region,
                          int32_t i, int32_t n, int64_t head) {
  if (i + kGroup < n) {
    prefetch(k_region, i + kGroup, head);
  } else {
    prefetch(v_region, 0, head);
  }
}

// The same partition with AVX-512, in groups of 16 positions: for each group, every
// head's 16 scores (a query head in registers while its 16 K vectors stream past,
// finished 16 at a time), later every head's weighted V of the group. A group's token
// rows ([num_kv_heads][head_dim] each) are read while they sit in L1, so the pool is
// read row after row rather than one head's slice of every row per pass.
// One position's score lanes: q . k in 16 fp32 lanes (summed later). A function, not a
// lambda: a lambda does not inherit its enclosing function's target attribute, so on a
// compiler run without -mavx512f it could not take or return an __m512.
template <int kVecs, typename T>
KVPOOL_AVX512 inline __m512 DotRow(const __m512* qv, const T* k) {
  __m512 acc = _mm512_mul_ps(qv[0], Load16(k));
  for (int v = 1; v < kVecs; ++v) acc = _mm512_fmadd_ps(qv[v], Load16(k + 16 * v), acc);
  return acc;
}

template <typename T, int32_t kHeadDim>
KVPOOL_AVX512 void AttendPartitionAvx512(const float* q, const char* k_region, const char* v_region,
                                         const PoolGeometry& g, const AttentionQuery& query,
                                         int32_t begin, int32_t end, int32_t num_heads, float scale,
                                         Partial part) {
  constexpr int kVecs = kHeadDim / 16;
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
  auto prefetch = [&](const char* region, int32_t i, int64_t head) {
    PrefetchGroup(region, rows.data(), i, n, head * static_cast<int64_t>(sizeof(T)),
                  kHeadDim * static_cast<int>(sizeof(T)));
  };
  for (int32_t kv = 0; kv < g.num_kv_heads; ++kv) prefetch(k_region, 0, int64_t{kv} * kHeadDim);
  // Pass 1: scores, 16 positions by every head at a time (the next group's K asked for
  // meanwhile).
  const __m512 vscale = _mm512_set1_ps(scale);
  for (int32_t i = 0; i < n; i += kGroup) {
    const int32_t m = std::min(kGroup, n - i);
    for (int32_t h = 0; h < num_heads; ++h) {
      const int32_t kv_head = h / group;
      const int64_t head = int64_t{kv_head} * kHeadDim;
      if (h % group == 0) PrefetchAfter(prefetch, k_region, v_region, i, n, head);
      __m512 qv[kVecs];
      for (int v = 0; v < kVecs; ++v) qv[v] = _mm512_loadu_ps(q + int64_t{h} * kHeadDim + 16 * v);
      float* out = scores.data() + static_cast<size_t>(h) * n + i;
      const float* ks = kScaled ? k_scales.data() + static_cast<size_t>(kv_head) * n + i : nullptr;
      if (m == kGroup) {
        __m512 acc[kGroup];
        for (int j = 0; j < kGroup; ++j) acc[j] = DotRow<kVecs>(qv, k_row(i + j, head));
        _mm512_storeu_ps(out,
                         _mm512_mul_ps(SumEachOf16(acc), kScaled ? _mm512_loadu_ps(ks) : vscale));
      } else {
        for (int32_t j = 0; j < m; ++j) {
          out[j] = _mm512_reduce_add_ps(DotRow<kVecs>(qv, k_row(i + j, head))) *
                   (kScaled ? ks[j] : scale);
        }
      }
    }
  }
  SoftmaxPieces(scores.data(), n, num_heads, part);
  // Pass 2: weighted V, 16 positions by every head at a time; a head's sum stays in
  // registers over its 16 positions (the next group's V asked for meanwhile).
  std::fill(part.acc, part.acc + int64_t{num_heads} * kHeadDim, 0.f);
  for (int32_t i = 0; i < n; i += kGroup) {
    const int32_t m = std::min(kGroup, n - i);
    for (int32_t h = 0; h < num_heads; ++h) {
      const int32_t kv_head = h / group;
      const int64_t head = int64_t{kv_head} * kHeadDim;
      const float* w = scores.data() + static_cast<size_t>(h) * n + i;
      if (h % group == 0 && i + kGroup < n) prefetch(v_region, i + kGroup, head);
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

#define KVPOOL_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")))

// bf16 K/V on a CPU with AVX512-BF16, read with bf16 dot products (vdpbf16ps: two
// products per fp32 lane, summed in fp32), as vLLM's CPU attention reads them: the query
// and the softmax weights are rounded to bf16 (K and V already are), so a K row is one
// load and one instruction per 32 elements instead of a widening per 16. For the V sum
// two positions' rows are interleaved in 16-bit pairs (in-lane unpacks), which permutes
// the head's dimensions within each 32; the sum is kept permuted and put back in order
// once per partition. Same passes and groups as AttendPartitionAvx512; measured on Zen 4
// (gpt2, batch 32, context 600) in docs/benchmarks.md.
KVPOOL_AVX512_BF16 inline uint32_t Bf16Bits(float x) {
  return static_cast<uint16_t>(
      _mm_cvtsi128_si32(reinterpret_cast<__m128i>(_mm_cvtneps_pbh(_mm_set1_ps(x)))));
}

// DotRow for bf16 q and k: two products per fp32 lane.
template <int kVecs>
KVPOOL_AVX512_BF16 inline __m512 DotRowBf16(const __m512bh* qh, const c10::BFloat16* k) {
  __m512 acc = _mm512_setzero_ps();
  for (int v = 0; v < kVecs; ++v) {
    acc = _mm512_dpbf16_ps(acc, qh[v], reinterpret_cast<__m512bh>(_mm512_loadu_si512(k + 32 * v)));
  }
  return acc;
}

template <int32_t kHeadDim>
KVPOOL_AVX512_BF16 void AttendPartitionBf16Dot(const float* q, const char* k_region,
                                               const char* v_region, const PoolGeometry& g,
                                               const AttentionQuery& query, int32_t begin,
                                               int32_t end, int32_t num_heads, float scale,
                                               Partial part) {
  static_assert(kHeadDim % 32 == 0, "32 bf16 per vector");
  constexpr int kVecs = kHeadDim / 32;
  const int32_t n = end - begin, group = num_heads / g.num_kv_heads;
  const RowAt at{g, query.block_table};
  thread_local std::vector<float> scores;    // [num_heads][n]
  thread_local std::vector<int64_t> rows;    // each position's row, bytes into a region
  thread_local std::vector<uint16_t> qb;     // [num_heads][kHeadDim]: the query in bf16
  thread_local std::vector<float> permuted;  // [num_heads][kHeadDim]: V sums, permuted
  scores.resize(static_cast<size_t>(num_heads) * n);
  rows.resize(static_cast<size_t>(n) + 1);
  for (int32_t t = begin; t < end; ++t) rows[t - begin] = at.row(t);
  rows[n] = rows[n - 1];  // an odd group's partner row (its weight is 0)
  qb.resize(static_cast<size_t>(num_heads) * kHeadDim);
  for (int32_t h = 0; h < num_heads; ++h) {
    for (int v = 0; v < kVecs; ++v) {
      const float* x = q + int64_t{h} * kHeadDim + 32 * v;
      _mm512_storeu_si512(qb.data() + int64_t{h} * kHeadDim + 32 * v,
                          reinterpret_cast<__m512i>(
                              _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + 16), _mm512_loadu_ps(x))));
    }
  }
  auto row_at = [&](const char* region, int32_t i, int64_t head) {
    return reinterpret_cast<const c10::BFloat16*>(region + rows[i]) + head;
  };
  auto prefetch = [&](const char* region, int32_t i, int64_t head) {
    PrefetchGroup(region, rows.data(), i, n, head * 2, kHeadDim * 2);
  };
  for (int32_t kv = 0; kv < g.num_kv_heads; ++kv) {
    prefetch(k_region, 0, int64_t{kv} * kHeadDim);
  }
  // Pass 1: scores, 16 positions by every head at a time.
  const __m512 vscale = _mm512_set1_ps(scale);
  for (int32_t i = 0; i < n; i += kGroup) {
    const int32_t m = std::min(kGroup, n - i);
    for (int32_t h = 0; h < num_heads; ++h) {
      const int64_t head = int64_t{h / group} * kHeadDim;
      if (h % group == 0) PrefetchAfter(prefetch, k_region, v_region, i, n, head);
      __m512bh qh[kVecs];
      for (int v = 0; v < kVecs; ++v) {
        qh[v] = reinterpret_cast<__m512bh>(
            _mm512_loadu_si512(qb.data() + int64_t{h} * kHeadDim + 32 * v));
      }
      float* out = scores.data() + static_cast<size_t>(h) * n + i;
      if (m == kGroup) {
        __m512 acc[kGroup];
        for (int j = 0; j < kGroup; ++j)
          acc[j] = DotRowBf16<kVecs>(qh, row_at(k_region, i + j, head));
        _mm512_storeu_ps(out, _mm512_mul_ps(SumEachOf16(acc), vscale));
      } else {
        for (int32_t j = 0; j < m; ++j) {
          out[j] =
              _mm512_reduce_add_ps(DotRowBf16<kVecs>(qh, row_at(k_region, i + j, head))) * scale;
        }
      }
    }
  }
  SoftmaxPieces(scores.data(), n, num_heads, part);
  // Pass 2: weighted V, two positions per instruction (the next group's V asked for
  // meanwhile).
  permuted.assign(static_cast<size_t>(num_heads) * kHeadDim, 0.f);
  for (int32_t i = 0; i < n; i += kGroup) {
    const int32_t m = std::min(kGroup, n - i);
    for (int32_t h = 0; h < num_heads; ++h) {
      const int64_t head = int64_t{h / group} * kHeadDim;
      if (h % group == 0 && i + kGroup < n) prefetch(v_region, i + kGroup, head);
      const float* w = scores.data() + static_cast<size_t>(h) * n + i;
      float* acc = permuted.data() + static_cast<size_t>(h) * kHeadDim;
      __m512 out[2 * kVecs];
      for (int v = 0; v < 2 * kVecs; ++v) out[v] = _mm512_loadu_ps(acc + 16 * v);
      for (int32_t j = 0; j < m; j += 2) {
        const uint32_t pair = Bf16Bits(w[j]) | (j + 1 < m ? Bf16Bits(w[j + 1]) << 16 : 0u);
        const __m512bh wv = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(pair)));
        const c10::BFloat16* a = row_at(v_region, i + j, head);
        const c10::BFloat16* b = row_at(v_region, i + j + 1, head);
        for (int v = 0; v < kVecs; ++v) {
          const __m512i x = _mm512_loadu_si512(a + 32 * v), y = _mm512_loadu_si512(b + 32 * v);
          out[2 * v] = _mm512_dpbf16_ps(out[2 * v], wv,
                                        reinterpret_cast<__m512bh>(_mm512_unpacklo_epi16(x, y)));
          out[2 * v + 1] = _mm512_dpbf16_ps(
              out[2 * v + 1], wv, reinterpret_cast<__m512bh>(_mm512_unpackhi_epi16(x, y)));
        }
      }
      for (int v = 0; v < 2 * kVecs; ++v) _mm512_storeu_ps(acc + 16 * v, out[v]);
    }
  }
  // Back in order: lane i of the low / high vector of 32 dimensions c holds dimension
  // 32c + 8 (i / 4) + i % 4 (+ 4 for the high one); one two-source permute per 16.
  const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i second =
      _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  for (int32_t h = 0; h < num_heads; ++h) {
    const float* src = permuted.data() + static_cast<size_t>(h) * kHeadDim;
    float* dst = part.acc + int64_t{h} * kHeadDim;
    for (int c = 0; c < kVecs; ++c) {
      const __m512 lo = _mm512_loadu_ps(src + 32 * c), hi = _mm512_loadu_ps(src + 32 * c + 16);
      _mm512_storeu_ps(dst + 32 * c, _mm512_permutex2var_ps(lo, first, hi));
      _mm512_storeu_ps(dst + 32 * c + 16, _mm512_permutex2var_ps(lo, second, hi));
    }
  }
}

}  // namespace

bool Bf16DotAttention() {
  static const bool yes = [] {
    const char* choice = std::getenv("KVPOOL_CPU_BF16");
    return __builtin_cpu_supports("avx512bf16") != 0 &&
           (choice == nullptr || std::strcmp(choice, "convert") != 0);
  }();
  return yes;
}

namespace {

template <typename T>
AttendFn PickFor(int32_t head_dim) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (Bf16DotAttention() && head_dim == 64) return &AttendPartitionBf16Dot<64>;
    if (Bf16DotAttention() && head_dim == 128) return &AttendPartitionBf16Dot<128>;
  }
  if (head_dim == 64) return &AttendPartitionAvx512<T, 64>;
  if (head_dim == 128) return &AttendPartitionAvx512<T, 128>;
  return nullptr;
}

}  // namespace

AttendFn PickAttendAvx512(KvDtype dtype, int32_t head_dim) {
  switch (dtype) {
    case KvDtype::kFloat16:
      return PickFor<c10::Half>(head_dim);
    case KvDtype::kBFloat16:
      return PickFor<c10::BFloat16>(head_dim);
    case KvDtype::kInt8:
      return PickFor<int8_t>(head_dim);
    case KvDtype::kFp8E4m3:
      return PickFor<Fp8>(head_dim);
    case KvDtype::kFloat32:
      break;
  }
  return PickFor<float>(head_dim);
}

}  // namespace kvpool::cpu_attention
