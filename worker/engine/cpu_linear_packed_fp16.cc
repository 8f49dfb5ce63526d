// The packed fp16 product: see cpu_linear_packed_fp16.h.
#include "engine/cpu_linear_packed_fp16.h"

// GCC 12's AVX-512 headers build some intrinsics on _mm512_undefined_*(), which
// -Wuninitialized flags wherever they inline (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "engine/cpu_linear_epilogue.h"
#include "engine/cpu_linear_packed_tiles.h"

namespace kvpool {
namespace {

using packed::kCols;
// How far ahead along a block's weights to prefetch: 32 steps of K (the bf16 kernel's
// 1 KiB ahead is 16 of its steps of two K).
constexpr int64_t kPrefetchBytes = 1024;

inline int64_t PackedIndex(int64_t r, int64_t c, int64_t k) {
  return ((r / kCols) * k + c) * kCols + r % kCols;
}

struct Args {
  const float* x;  // [M, K], rows ldx apart
  int64_t ldx;
  const uint16_t* w;  // packed
  int64_t k;
  packed::Epilogue e;
  float* y;   // [M, N]
  int64_t n;  // N: columns of y (the packed rows past it are zero padding)
};

// Rows [m0, m0 + M) of x against column blocks [j0, j0 + J): M x J chains of FMAs, each
// block's weights read once per tile as one sequential stream. kFetch: each step also
// fetches the next line of the chunk after this one from `next` on (ForEachTile).
template <int M, int J, bool kFetch>
__attribute__((target("avx512f,f16c"))) void Tile(const Args& a, int64_t m0, int64_t j0,
                                                  const char* next) {
  __m512 acc[M][J];
  for (int m = 0; m < M; ++m) {
    for (int j = 0; j < J; ++j) acc[m][j] = _mm512_setzero_ps();
  }
  const uint16_t* w[J];
  for (int j = 0; j < J; ++j) w[j] = a.w + (j0 + j) * a.k * kCols;
  const float* x[M];
  for (int m = 0; m < M; ++m) x[m] = a.x + (m0 + m) * a.ldx;
  for (int64_t c = 0; c < a.k; ++c) {
    if constexpr (kFetch) {
      _mm_prefetch(next, _MM_HINT_T1);
      next += 64;
    }
    __m512 wv[J];
    for (int j = 0; j < J; ++j) {
      const uint16_t* p = w[j] + c * kCols;
      // One prefetch per 64-byte line: every other step of K.
      if ((c & 1) == 0)
        _mm_prefetch(reinterpret_cast<const char*>(p) + kPrefetchBytes, _MM_HINT_T0);
      wv[j] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    }
    for (int m = 0; m < M; ++m) {
      const __m512 xv = _mm512_set1_ps(x[m][c]);
      for (int j = 0; j < J; ++j) acc[m][j] = _mm512_fmadd_ps(wv[j], xv, acc[m][j]);
    }
  }
  for (int j = 0; j < J; ++j) {
    const int64_t col = (j0 + j) * kCols;
    // The last block may reach into the padding rows: only the real columns are kept.
    const __mmask16 keep = packed::KeepMask(col, a.n);
    for (int m = 0; m < M; ++m)
      packed::Finish(a.e, acc[m][j], keep, col, a.y + (m0 + m) * a.n + col);
  }
}

}  // namespace

bool CanPackFp16(const at::Tensor& w) {
  return w.dim() == 2 && w.scalar_type() == at::kHalf && w.is_contiguous() && w.size(0) > 0 &&
         w.size(1) > 0;
}

at::Tensor PackFp16(const at::Tensor& w, PackedArena* arena) {
  TORCH_CHECK(CanPackFp16(w), "PackFp16: a contiguous fp16 [N, K]");
  const int64_t n = w.size(0), k = w.size(1);
  PackedArena own(arena == nullptr ? PackedArena::Footprint(n, k) : 0);
  at::Tensor packed =
      (arena == nullptr ? own : *arena).Zeroed((n + kCols - 1) / kCols * kCols, k, w.options());
  const auto* src = reinterpret_cast<const uint16_t*>(w.data_ptr<at::Half>());
  auto* dst = reinterpret_cast<uint16_t*>(packed.data_ptr<at::Half>());
  packed::PackElements(src, dst, n, k, [k](int64_t r, int64_t c) { return PackedIndex(r, c, k); });
  return packed;
}

at::Tensor UnpackFp16(const at::Tensor& packed, int64_t n) {
  TORCH_CHECK(CanPackFp16(packed) && packed.size(0) % kCols == 0 && n > packed.size(0) - kCols &&
                  n <= packed.size(0),
              "UnpackFp16: not a packed fp16 matrix of ", n, " rows");
  const int64_t k = packed.size(1);
  at::Tensor w = at::empty({n, k}, packed.options());
  const auto* src = reinterpret_cast<const uint16_t*>(packed.data_ptr<at::Half>());
  auto* dst = reinterpret_cast<uint16_t*>(w.data_ptr<at::Half>());
  packed::UnpackElements(src, dst, n, k,
                         [k](int64_t r, int64_t c) { return PackedIndex(r, c, k); });
  return w;
}

at::Tensor CpuLinearPackedFp16(const at::Tensor& x, const at::Tensor& packed, int64_t n,
                               const at::Tensor& b, const PackedEpilogue& epilogue) {
  TORCH_CHECK(CanPackFp16(packed) && packed.size(0) % kCols == 0 && n > packed.size(0) - kCols &&
                  n <= packed.size(0) && x.dim() == 2 && x.size(1) == packed.size(1) &&
                  (!b.defined() || b.numel() == n),
              "CpuLinearPackedFp16: x [M, K] against a packed [N, K] of ", n, " rows");
  const int64_t rows = x.size(0);
  const at::Tensor& residual = epilogue.residual;
  TORCH_CHECK(!residual.defined() ||
                  (residual.scalar_type() == at::kFloat && residual.is_contiguous() &&
                   residual.dim() == 2 && residual.size(0) == rows && residual.size(1) == n),
              "CpuLinearPackedFp16: the residual must be a contiguous fp32 [", rows, ", ", n, "]");
  at::Tensor xf = x.to(at::kFloat);
  if (xf.stride(1) != 1) xf = xf.contiguous();
  const at::Tensor bias = b.defined() ? b.to(at::kFloat).contiguous() : b;
  at::Tensor y =
      residual.defined() ? residual : at::empty({rows, n}, x.options().dtype(at::kFloat));
  const Args a{
      xf.data_ptr<float>(),
      xf.stride(0),
      reinterpret_cast<const uint16_t*>(packed.data_ptr<at::Half>()),
      packed.size(1),
      {bias.defined() ? bias.data_ptr<float>() : nullptr, epilogue.gelu_tanh, residual.defined()},
      y.data_ptr<float>(),
      n};
  const int64_t blocks = packed.size(0) / kCols;
  // A chunk: three blocks of [K][16] fp16, one after another.
  const int64_t chunk_bytes = packed::kTileBlocks * kCols * a.k * 2;
  packed::ForEachTile(rows, blocks, a.w, chunk_bytes, /*steps=*/a.k,
                      [&](auto m, auto j, auto fetch, int64_t m0, int64_t j0, const char* ahead) {
                        Tile<decltype(m)::value, decltype(j)::value, decltype(fetch)::value>(
                            a, m0, j0, ahead);
                      });
  return y;
}

}  // namespace kvpool
