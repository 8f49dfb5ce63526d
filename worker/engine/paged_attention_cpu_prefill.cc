// Prompt attention on the CPU for bf16 K/V with AVX512-BF16 (see
// paged_attention_cpu_kernels.h): a tile of up to 16 consecutive queries of one prompt,
// one query head, over the tile's whole context, as flash attention does it (an online
// softmax per 32 positions, nothing of size context kept).
//
// The decode kernel takes one query at a time: each score is a dot product finished by
// a reduction across the lanes of a vector, and each position's K and V are read once per
// query. Here the 16 lanes of a vector are the tile's 16 queries instead: a score is
// `vdpbf16ps` of the tile's q (transposed once per task into bf16 pairs, lane = query)
// with one K word broadcast from the pool, and the softmax (max, exponentials, sums) is
// lane-wise, with no reduction at all. The weighted V sum keeps the tile's outputs
// transposed too (a vector per head dimension, lane = query): two positions' V rows
// interleaved into bf16 pairs, each pair word broadcast against the two positions'
// weights. q and the softmax weights are rounded to bf16, as the decode kernel's bf16
// path does; sums are fp32. Measured on Zen 4 in docs/benchmarks.md.
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "engine/cpu_linear_epilogue.h"  // packed::Exp, the products' AVX-512 e^x
#include "engine/paged_attention_cpu_kernels.h"

#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace kvpool::cpu_attention {
namespace {

#define KVPOOL_AVX512_BF16 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")))

constexpr int32_t kStep = 32;  // positions per online-softmax step

// 16 fp32 lanes rounded to bf16 (nearest even), each in the low half of a 32-bit lane.
KVPOOL_AVX512_BF16 inline __m512i Bf16Lanes(__m512 x) {
  return _mm512_cvtepu16_epi32(reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(x)));
}

KVPOOL_AVX512_BF16 inline __m512bh Word(uint32_t w) {
  return reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(w)));
}

// Word w of a V pair row (see the pass below) holds head dimension Dim(w): the 16-bit
// unpacks interleave within 128-bit lanes, so each 32 dimensions come out permuted.
constexpr int32_t Dim(int32_t w) {
  const int32_t c = w / 32, r = w % 32;
  return 32 * c + 8 * ((r % 16) / 4) + 4 * (r / 16) + r % 4;
}

template <int32_t kHeadDim>
KVPOOL_AVX512_BF16 void AttendTileBf16(const TileTask& task, const PoolGeometry& g,
                                       const char* k_region, const char* v_region, float scale) {
  static_assert(kHeadDim % 32 == 0, "32 bf16 per vector");
  constexpr int32_t kWords = kHeadDim / 2;  // bf16 pairs in a head vector
  const RowAt at{g, task.block_table};
  alignas(64) uint32_t qt[kWords][kTileQueries];     // q word p, lane = query
  alignas(64) float s[kStep][kTileQueries];          // scores, then weights
  alignas(64) uint32_t pw[kStep / 2][kTileQueries];  // weights of positions 2j, 2j + 1
  alignas(64) uint32_t vw[kStep / 2][kHeadDim];      // V of positions 2j, 2j + 1, paired
  alignas(64) float ot[kHeadDim][kTileQueries];      // output word w (permuted), lane = query
  // The tile's q, transposed into bf16 pairs; missing queries are zeros (their lanes
  // are computed and never written).
  for (int32_t i = 0; i < kTileQueries; ++i) {
    if (i >= task.count) {
      for (int32_t p = 0; p < kWords; ++p) qt[p][i] = 0u;
      continue;
    }
    const float* x = task.q + int64_t{i} * task.q_row_stride + int64_t{task.head} * kHeadDim;
    for (int32_t p = 0; p < kWords; ++p) {
      qt[p][i] = static_cast<uint32_t>(c10::BFloat16(x[2 * p]).x) |
                 static_cast<uint32_t>(c10::BFloat16(x[2 * p + 1]).x) << 16;
    }
  }
  for (auto& row : ot) _mm512_store_ps(row, _mm512_setzero_ps());
  const int64_t head_offset = int64_t{task.kv_head} * kHeadDim * 2;  // bytes into a row
  // Lane i sees positions [0, first_context + i).
  const __m512i context =
      _mm512_add_epi32(_mm512_set1_epi32(task.first_context),
                       _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  const __m512 vscale = _mm512_set1_ps(scale);
  const __m512 minus_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 running_max = minus_inf, sum = _mm512_setzero_ps();
  const int32_t total = task.first_context + task.count - 1;
  for (int32_t t0 = 0; t0 < total; t0 += kStep) {
    const int32_t n = std::min(kStep, total - t0);
    // Scores, 8 positions at a time (8 independent sums per q word).
    for (int32_t i = 0; i < n; i += 8) {
      const int32_t m = std::min(8, n - i);
      const uint32_t* k[8];
      for (int32_t j = 0; j < 8; ++j) {
        k[j] = reinterpret_cast<const uint32_t*>(k_region + at.row(t0 + i + std::min(j, m - 1)) +
                                                 head_offset);
      }
      __m512 acc[8];
      for (auto& a : acc) a = _mm512_setzero_ps();
      for (int32_t p = 0; p < kWords; ++p) {
        const __m512bh qv = reinterpret_cast<__m512bh>(_mm512_load_si512(qt[p]));
        for (int32_t j = 0; j < 8; ++j) acc[j] = _mm512_dpbf16_ps(acc[j], qv, Word(k[j][p]));
      }
      for (int32_t j = 0; j < m; ++j) _mm512_store_ps(s[i + j], _mm512_mul_ps(acc[j], vscale));
    }
    // The online softmax: positions past a lane's context are out; the sums so far are
    // rescaled to the new max.
    __m512 step_max = running_max;
    for (int32_t j = 0; j < n; ++j) {
      const __mmask16 seen = _mm512_cmpgt_epi32_mask(context, _mm512_set1_epi32(t0 + j));
      const __m512 x = _mm512_mask_blend_ps(seen, minus_inf, _mm512_load_ps(s[j]));
      _mm512_store_ps(s[j], x);
      step_max = _mm512_max_ps(step_max, x);
    }
    const __m512 rescale = packed::Exp(_mm512_sub_ps(running_max, step_max));
    running_max = step_max;
    __m512 step_sum = _mm512_setzero_ps();
    for (int32_t j = 0; j < n; ++j) {
      const __m512 x = _mm512_load_ps(s[j]);
      const __mmask16 seen = _mm512_cmp_ps_mask(x, minus_inf, _CMP_NEQ_OQ);
      // Rounded to bf16 here, so that the sum divided by at the end is the sum of the
      // weights the V rows were multiplied by: a query of 2 positions then gets a mix
      // of the two rows, not a mix off by the weights' rounding (up to 2^-9 of a row).
      const __m512 w = _mm512_castsi512_ps(_mm512_slli_epi32(
          Bf16Lanes(_mm512_maskz_mov_ps(seen, packed::Exp(_mm512_sub_ps(x, step_max)))), 16));
      _mm512_store_ps(s[j], w);
      step_sum = _mm512_add_ps(step_sum, w);
    }
    sum = _mm512_fmadd_ps(sum, rescale, step_sum);
    // Weights and V rows paired by positions (2j, 2j + 1); an odd last position pairs
    // with itself at weight 0.
    const int32_t pairs = (n + 1) / 2;
    for (int32_t j = 0; j < pairs; ++j) {
      const bool odd = 2 * j + 1 == n;
      const __m512i lo = Bf16Lanes(_mm512_load_ps(s[2 * j]));
      const __m512i hi = odd ? _mm512_setzero_si512() : Bf16Lanes(_mm512_load_ps(s[2 * j + 1]));
      _mm512_store_si512(pw[j], _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
      const char* a = v_region + at.row(t0 + 2 * j) + head_offset;
      const char* b = odd ? a : v_region + at.row(t0 + 2 * j + 1) + head_offset;
      for (int32_t c = 0; c < kHeadDim / 32; ++c) {
        const __m512i x = _mm512_loadu_si512(a + 64 * c), y = _mm512_loadu_si512(b + 64 * c);
        _mm512_store_si512(vw[j] + 32 * c, _mm512_unpacklo_epi16(x, y));
        _mm512_store_si512(vw[j] + 32 * c + 16, _mm512_unpackhi_epi16(x, y));
      }
    }
    // The weighted V sum, 8 output words at a time.
    for (int32_t w0 = 0; w0 < kHeadDim; w0 += 8) {
      __m512 acc[8];
      for (int32_t u = 0; u < 8; ++u) acc[u] = _mm512_mul_ps(_mm512_load_ps(ot[w0 + u]), rescale);
      for (int32_t j = 0; j < pairs; ++j) {
        const __m512bh weights = reinterpret_cast<__m512bh>(_mm512_load_si512(pw[j]));
        for (int32_t u = 0; u < 8; ++u)
          acc[u] = _mm512_dpbf16_ps(acc[u], weights, Word(vw[j][w0 + u]));
      }
      for (int32_t u = 0; u < 8; ++u) _mm512_store_ps(ot[w0 + u], acc[u]);
    }
  }
  // Normalised, back to [query][head dimension].
  const __m512 inverse = _mm512_div_ps(_mm512_set1_ps(1.0f), sum);
  alignas(64) float lanes[kTileQueries];
  for (int32_t w = 0; w < kHeadDim; ++w) {
    _mm512_store_ps(lanes, _mm512_mul_ps(_mm512_load_ps(ot[w]), inverse));
    float* o = task.out + int64_t{task.head} * kHeadDim + Dim(w);
    for (int32_t i = 0; i < task.count; ++i) o[int64_t{i} * task.out_row_stride] = lanes[i];
  }
}

}  // namespace

AttendTileFn PickAttendTile(KvDtype dtype, int32_t head_dim) {
  // KVPOOL_CPU_PROMPT_TILES=off: every query through the one-query kernel (comparisons).
  static const bool off = [] {
    const char* choice = std::getenv("KVPOOL_CPU_PROMPT_TILES");
    return choice != nullptr && std::strcmp(choice, "off") == 0;
  }();
  if (off || dtype != KvDtype::kBFloat16 || !Bf16DotAttention()) return nullptr;
  if (head_dim == 64) return &AttendTileBf16<64>;
  if (head_dim == 128) return &AttendTileBf16<128>;
  return nullptr;
}

}  // namespace kvpool::cpu_attention
