// The end of a packed bf16 product (cpu_linear_packed.h), 16 columns of one row at a
// time while the sums are still in a register: + bias, then GPT-2's tanh GELU where
// asked, then either stored or added into a residual in place. Fusing it saves a pass
// over the output per product and ATen's GELU, whose Sleef tanh (its AVX2 build) took
// 6-8% of a bf16 decode step at batch 32 and of a 512-token prefill on an Intel Xeon
// with AMX (docs/benchmarks.md). Internal to the packed kernels; the prompt attention
// tiles (paged_attention_cpu_prefill.cc) use its Exp for their softmax.
#pragma once

// GCC 12's AVX-512 headers build some intrinsics on _mm512_undefined_*(), which
// -Wuninitialized flags wherever they inline (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>

#include <cstdint>

namespace kvpool::packed {

#define KVPOOL_EPILOGUE_TARGET __attribute__((target("avx512f")))

// exp(z): z = n ln2 + r with |r| <= ln2 / 2, e^r by its Taylor polynomial to r^7
// (relative error under 5e-9, below fp32's rounding), times 2^n (infinity past 88.7;
// z is held in [-88, 100] first, so n stays small).
KVPOOL_EPILOGUE_TARGET inline __m512 Exp(__m512 z) {
  z = _mm512_max_ps(_mm512_min_ps(z, _mm512_set1_ps(100.f)), _mm512_set1_ps(-88.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(z, _mm512_set1_ps(1.44269504089f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // r = z - n ln2, ln2 in two parts so that n ln2's rounding does not reach r.
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), z);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.4286068203094172e-06f), r);
  __m512 p = _mm512_set1_ps(1.f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

// GPT-2's GELU, 0.5 x (1 + tanh(u)) with u = sqrt(2 / pi) (x + 0.044715 x^3), in the
// equivalent form x / (1 + e^(-2u)), which neither cancels near 0 nor overflows.
KVPOOL_EPILOGUE_TARGET inline __m512 GeluTanh(__m512 x) {
  const __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
  const __m512 u = _mm512_fmadd_ps(x3, _mm512_set1_ps(0.044715f), x);
  const __m512 e = Exp(_mm512_mul_ps(u, _mm512_set1_ps(-2.f * 0.7978845608028654f)));
  return _mm512_div_ps(x, _mm512_add_ps(e, _mm512_set1_ps(1.f)));
}

// What follows the sums of a product.
struct Epilogue {
  const float* bias = nullptr;  // [n] or nullptr
  bool gelu_tanh = false;
  bool accumulate = false;  // out += y (a residual) instead of out = y
};

// The columns of the 16 from `col` that are real (below n): the last block of a packed
// matrix is padded with zero rows.
inline __mmask16 KeepMask(int64_t col, int64_t n) {
  return col + 16 <= n ? __mmask16{0xffff} : static_cast<__mmask16>((1u << (n - col)) - 1);
}

// Columns [col, col + 16) of one output row, `keep` masking those past n.
KVPOOL_EPILOGUE_TARGET inline void Finish(const Epilogue& e, __m512 sums, __mmask16 keep,
                                          int64_t col, float* out) {
  if (e.bias != nullptr) sums = _mm512_add_ps(sums, _mm512_maskz_loadu_ps(keep, e.bias + col));
  if (e.gelu_tanh) sums = GeluTanh(sums);
  if (e.accumulate) sums = _mm512_add_ps(sums, _mm512_maskz_loadu_ps(keep, out));
  _mm512_mask_storeu_ps(out, keep, sums);
}

}  // namespace kvpool::packed
