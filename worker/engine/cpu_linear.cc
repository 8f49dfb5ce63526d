#include "engine/cpu_linear.h"

#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace kvpool {
namespace {

bool KernelEnabled() {
  static const bool enabled = [] {
    const char* choice = std::getenv("KVPOOL_CPU_LINEAR");
    const bool forced_blas = choice != nullptr && std::strcmp(choice, "blas") == 0;
    return !forced_blas && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return enabled;
}

__attribute__((target("avx2,fma"))) inline float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

struct LinearArgs {
  const float* x;  // [M, K], rows ldx apart
  int64_t ldx;
  const float* w;  // [N, K]
  int64_t k;
  const float* b;  // [N] or nullptr
  float* y;        // [M, N], contiguous
  int64_t n;
};

// M rows of x against weight rows [n, n + R): M*R independent FMA chains, so that
// the FMA latency is hidden (8 chains saturate two FMA ports) while each weight
// vector is loaded once for all M rows.
template <int M, int R>
__attribute__((target("avx2,fma"))) void Tile(const LinearArgs& a, int64_t m0, int64_t n) {
  const int64_t k_vec = a.k & ~int64_t{7};
  const float* w_rows[R];
  for (int r = 0; r < R; ++r) w_rows[r] = a.w + (n + r) * a.k;
  const float* x_rows[M];
  for (int m = 0; m < M; ++m) x_rows[m] = a.x + (m0 + m) * a.ldx;
  __m256 acc[M][R];
  for (int m = 0; m < M; ++m) {
    for (int r = 0; r < R; ++r) acc[m][r] = _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < k_vec; k += 8) {
    __m256 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = _mm256_loadu_ps(w_rows[r] + k);
    for (int m = 0; m < M; ++m) {
      const __m256 xv = _mm256_loadu_ps(x_rows[m] + k);
      for (int r = 0; r < R; ++r) acc[m][r] = _mm256_fmadd_ps(wv[r], xv, acc[m][r]);
    }
  }
  for (int m = 0; m < M; ++m) {
    for (int r = 0; r < R; ++r) {
      float sum = HorizontalSum(acc[m][r]);
      for (int64_t k = k_vec; k < a.k; ++k) sum += w_rows[r][k] * x_rows[m][k];
      a.y[(m0 + m) * a.n + n + r] = a.b != nullptr ? sum + a.b[n + r] : sum;
    }
  }
}

template <int M, int R>
void Span(const LinearArgs& a, int64_t m0, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + R <= n1; n += R) Tile<M, R>(a, m0, n);
  for (; n < n1; ++n) Tile<M, 1>(a, m0, n);
}

// Up to 8 rows of x in one pass; R keeps M*R between 8 and 16 accumulators, which
// with -march=native's 32 vector registers never spill.
void Rows(const LinearArgs& a, int64_t m0, int64_t rows, int64_t n0, int64_t n1) {
  switch (rows) {
    case 1: return Span<1, 4>(a, m0, n0, n1);
    case 2: return Span<2, 4>(a, m0, n0, n1);
    case 3: return Span<3, 4>(a, m0, n0, n1);
    case 4: return Span<4, 4>(a, m0, n0, n1);
    case 5: return Span<5, 2>(a, m0, n0, n1);
    case 6: return Span<6, 2>(a, m0, n0, n1);
    case 7: return Span<7, 2>(a, m0, n0, n1);
    default: return Span<8, 2>(a, m0, n0, n1);
  }
}

at::Tensor AtenLinear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  if (x.size(0) == 1) {
    at::Tensor y = b.defined() ? at::addmv(b, w, x[0]) : at::mv(w, x[0]);
    return y.unsqueeze(0);
  }
  return b.defined() ? at::addmm(b, x, w.t()) : at::mm(x, w.t());
}

}  // namespace

bool CpuLinearUsesKernel(int64_t rows) {
  return rows >= 2 && rows <= kCpuLinearMaxRows && KernelEnabled();
}

at::Tensor CpuLinear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  const int64_t rows = x.size(0);
  const bool fits = x.device().is_cpu() && x.scalar_type() == at::kFloat &&
                    w.scalar_type() == at::kFloat && w.is_contiguous() && x.stride(1) == 1 &&
                    (!b.defined() || (b.scalar_type() == at::kFloat && b.is_contiguous()));
  if (!fits || !CpuLinearUsesKernel(rows)) return AtenLinear(x, w, b);
  const int64_t n = w.size(0);
  at::Tensor y = at::empty({rows, n}, x.options());
  const LinearArgs args{x.data_ptr<float>(), x.stride(0),     w.data_ptr<float>(), w.size(1),
                        b.defined() ? b.data_ptr<float>() : nullptr, y.data_ptr<float>(), n};
  // Threads split the weight rows in chunks of about 128 KiB, which stay in L2 while
  // each 8-row group of x passes over them: the weights come from memory once.
  const int64_t chunk = std::max<int64_t>(4, (128 * 1024 / sizeof(float)) / args.k / 4 * 4);
  at::parallel_for(0, (n + chunk - 1) / chunk, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t n0 = c * chunk;
      const int64_t n1 = std::min(n, n0 + chunk);
      for (int64_t m0 = 0; m0 < rows; m0 += 8) Rows(args, m0, std::min<int64_t>(8, rows - m0), n0, n1);
    }
  });
  return y;
}

}  // namespace kvpool
