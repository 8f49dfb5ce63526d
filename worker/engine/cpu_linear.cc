// The CPU linear layers: see cpu_linear.h. The small-row kernel (weights read once for
// every row) and the dispatch to BLAS above it; no model structure here.
#include "engine/cpu_linear.h"

// GCC 12's AVX-512 headers build some intrinsics on _mm512_undefined_*(), which
// -Wuninitialized flags wherever they inline (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "engine/cpu_linear_packed.h"

namespace kvpool {
namespace {

enum class Isa { kNone, kAvx2, kAvx512 };

Isa KernelIsa() {
  static const Isa isa = [] {
    const char* choice = std::getenv("KVPOOL_CPU_LINEAR");
    if (choice != nullptr && std::strcmp(choice, "blas") == 0) return Isa::kNone;
    const bool avx512 =
        __builtin_cpu_supports("avx512f") != 0 && __builtin_cpu_supports("f16c") != 0;
    if (avx512 && (choice == nullptr || std::strcmp(choice, "avx2") != 0)) return Isa::kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c")) {
      return Isa::kAvx2;
    }
    return Isa::kNone;
  }();
  return isa;
}

// W is float (fp32 weights), uint16_t (bf16 weights: the upper halves of fp32s) or
// Fp16 (IEEE half weights).
template <typename W>
struct LinearArgs {
  const float* x;  // [M, K], rows ldx apart
  int64_t ldx;
  const W* w;  // [N, K]
  int64_t k;
  const float* b;  // [N] or nullptr
  float* y;        // [M, N], contiguous
  int64_t n;
};

inline float Widen(float w) { return w; }
inline float Widen(uint16_t w) {
  const uint32_t bits = static_cast<uint32_t>(w) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
// fp16 weights (--weight-dtype fp16): IEEE half bits, widened exactly by F16C's
// vcvtph2ps as they load (every fp16 value is an fp32 value).
struct Fp16 {
  uint16_t bits;
};
inline float Widen(Fp16 w) { return c10::detail::fp16_ieee_to_fp32_value(w.bits); }

// Weight vectors as fp32: fp32 loaded as is, bf16 widened exactly (a 16-bit shift),
// fp16 by vcvtph2ps (F16C; AVX-512F for 16 lanes).
__attribute__((target("avx2,fma,f16c"))) inline __m256 LoadW256(const float* p) {
  return _mm256_loadu_ps(p);
}
__attribute__((target("avx2,fma,f16c"))) inline __m256 LoadW256(const uint16_t* p) {
  const __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
}
__attribute__((target("avx2,fma,f16c"))) inline __m256 LoadW256(const Fp16* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
__attribute__((target("avx512f,avx2,fma,f16c"))) inline __m512 LoadW512(const float* p) {
  return _mm512_loadu_ps(p);
}
__attribute__((target("avx512f,avx2,fma,f16c"))) inline __m512 LoadW512(const uint16_t* p) {
  const __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}
__attribute__((target("avx512f,avx2,fma,f16c"))) inline __m512 LoadW512(const Fp16* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// Software prefetch distance along each weight row (4 KiB for fp32, 16 KiB for bf16):
// the first pass over a chunk streams its weights from memory, and prefetching them
// this far ahead overlaps the loads with the FMAs (fp32, measured on Zen 5 at 2-16
// rows: 10-25% faster than the hardware prefetcher alone; bf16 on Zen 4: 16 KiB beat
// 4 KiB, docs/benchmarks.md). Later passes read the chunk from L2.
template <typename W>
constexpr int64_t kPrefetchBytes = sizeof(W) == 4 ? 4096 : 16384;

// The same register-blocked loop for both vector widths: M rows of x against weight
// rows [n, n + R), M*R independent FMA chains (8 or more hide the FMA latency on two
// ports), each weight vector loaded once for all M rows. V is the ISA's traits.
#define KVPOOL_DEFINE_TILE(NAME, TARGET, VEC, WIDTH, LOAD, LOADW, FMA, ZERO, HSUM)           \
  template <int M, int R, typename W>                                                        \
  __attribute__((target(TARGET))) void NAME(const LinearArgs<W>& a, int64_t m0, int64_t n) { \
    const int64_t k_vec = a.k & ~int64_t{WIDTH - 1};                                         \
    const W* w_rows[R];                                                                      \
    for (int r = 0; r < R; ++r) w_rows[r] = a.w + (n + r) * a.k;                             \
    const float* x_rows[M];                                                                  \
    for (int m = 0; m < M; ++m) x_rows[m] = a.x + (m0 + m) * a.ldx;                          \
    VEC acc[M][R];                                                                           \
    for (int m = 0; m < M; ++m) {                                                            \
      for (int r = 0; r < R; ++r) acc[m][r] = ZERO();                                        \
    }                                                                                        \
    for (int64_t k = 0; k < k_vec; k += WIDTH) {                                             \
      VEC wv[R];                                                                             \
      for (int r = 0; r < R; ++r) {                                                          \
        if (sizeof(W) * WIDTH >= 64 || (k & (64 / sizeof(W) - 1)) == 0) {                    \
          _mm_prefetch(reinterpret_cast<const char*>(w_rows[r] + k) + kPrefetchBytes<W>,     \
                       _MM_HINT_T0);                                                         \
        }                                                                                    \
        wv[r] = LOADW(w_rows[r] + k);                                                        \
      }                                                                                      \
      for (int m = 0; m < M; ++m) {                                                          \
        const VEC xv = LOAD(x_rows[m] + k);                                                  \
        for (int r = 0; r < R; ++r) acc[m][r] = FMA(wv[r], xv, acc[m][r]);                   \
      }                                                                                      \
    }                                                                                        \
    for (int m = 0; m < M; ++m) {                                                            \
      for (int r = 0; r < R; ++r) {                                                          \
        float sum = HSUM(acc[m][r]);                                                         \
        for (int64_t k = k_vec; k < a.k; ++k) sum += Widen(w_rows[r][k]) * x_rows[m][k];     \
        a.y[(m0 + m) * a.n + n + r] = a.b != nullptr ? sum + a.b[n + r] : sum;               \
      }                                                                                      \
    }                                                                                        \
  }

__attribute__((target("avx2,fma,f16c"))) inline float HorizontalSum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
__attribute__((target("avx2,fma,f16c"))) inline __m256 Zero256() { return _mm256_setzero_ps(); }
__attribute__((target("avx512f,avx2,fma,f16c"))) inline __m512 Zero512() {
  return _mm512_setzero_ps();
}
__attribute__((target("avx512f,avx2,fma,f16c"))) inline float HorizontalSum512(__m512 v) {
  return _mm512_reduce_add_ps(v);
}

KVPOOL_DEFINE_TILE(TileAvx2, "avx2,fma,f16c", __m256, 8, _mm256_loadu_ps, LoadW256, _mm256_fmadd_ps,
                   Zero256, HorizontalSum256)
KVPOOL_DEFINE_TILE(TileAvx512, "avx512f,avx2,fma,f16c", __m512, 16, _mm512_loadu_ps, LoadW512,
                   _mm512_fmadd_ps, Zero512, HorizontalSum512)
#undef KVPOOL_DEFINE_TILE

template <int M, int R, typename W>
void SpanAvx2(const LinearArgs<W>& a, int64_t m0, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + R <= n1; n += R) TileAvx2<M, R>(a, m0, n);
  for (; n < n1; ++n) TileAvx2<M, 1>(a, m0, n);
}

template <int M, int R, typename W>
void SpanAvx512(const LinearArgs<W>& a, int64_t m0, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + R <= n1; n += R) TileAvx512<M, R>(a, m0, n);
  for (; n < n1; ++n) TileAvx512<M, 1>(a, m0, n);
}

// AVX2 has 16 vector registers: up to 4 rows of x per pass with 4 weight rows
// (16 accumulators would spill beyond that, so more rows take several passes).
template <typename W>
void RowsAvx2(const LinearArgs<W>& a, int64_t m0, int64_t rows, int64_t n0, int64_t n1) {
  switch (rows) {
    case 1:
      return SpanAvx2<1, 4>(a, m0, n0, n1);
    case 2:
      return SpanAvx2<2, 4>(a, m0, n0, n1);
    case 3:
      return SpanAvx2<3, 3>(a, m0, n0, n1);
    default:
      return SpanAvx2<4, 2>(a, m0, n0, n1);
  }
}

// AVX-512 has 32 registers: passes of 4 rows against 6 weight rows (24 accumulators,
// 10 loads per 24 FMAs), and 3 / 2 / 1 rows against 8 / 12 / 12 for a remainder. On
// Zen 5 this beat 8x2 and 12x2 tiles (the previous kernel) by 15-35% at 2-16 rows,
// streaming the weights, and by 20% at 96 rows (a prefill, where they sit in L2), in a
// standalone harness of gpt2's shapes.
template <typename W>
void RowsAvx512(const LinearArgs<W>& a, int64_t m0, int64_t rows, int64_t n0, int64_t n1) {
  switch (rows) {
    case 1:
      return SpanAvx512<1, 12>(a, m0, n0, n1);
    case 2:
      return SpanAvx512<2, 12>(a, m0, n0, n1);
    case 3:
      return SpanAvx512<3, 8>(a, m0, n0, n1);
    default:
      return SpanAvx512<4, 6>(a, m0, n0, n1);
  }
}
// bf16 weights against x rounded to bf16, on AVX512-BF16's dot products: each
// vdpbf16ps multiplies 32 weight and x pairs into 16 fp32 sums, so a 64-byte line of
// weights costs one load and one instruction per row of x (the widening kernel spends
// four), and a decode step streams weights at the memory's rate. Sums stay fp32.
struct Bf16DotArgs {
  const uint16_t* x;  // [M, K] bf16, contiguous
  const uint16_t* w;  // [N, K] bf16
  int64_t k;
  const float* b;
  float* y;
  int64_t n;
};

template <int M, int R>
__attribute__((target("avx512f,avx512bw,avx512bf16,avx2,fma"))) void TileBf16Dot(
    const Bf16DotArgs& a, int64_t m0, int64_t n) {
  const int64_t k_vec = a.k & ~int64_t{31};
  const uint16_t* w_rows[R];
  for (int r = 0; r < R; ++r) w_rows[r] = a.w + (n + r) * a.k;
  const uint16_t* x_rows[M];
  for (int m = 0; m < M; ++m) x_rows[m] = a.x + (m0 + m) * a.k;
  __m512 acc[M][R];
  for (int m = 0; m < M; ++m) {
    for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < k_vec; k += 32) {
    __m512bh wv[R];
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(w_rows[r] + k) + kPrefetchBytes<uint16_t>,
                   _MM_HINT_T0);
      wv[r] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(w_rows[r] + k));
    }
    for (int m = 0; m < M; ++m) {
      const __m512bh xv = reinterpret_cast<__m512bh>(_mm512_loadu_si512(x_rows[m] + k));
      for (int r = 0; r < R; ++r) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], wv[r], xv);
    }
  }
  for (int m = 0; m < M; ++m) {
    for (int r = 0; r < R; ++r) {
      float sum = _mm512_reduce_add_ps(acc[m][r]);
      for (int64_t k = k_vec; k < a.k; ++k) sum += Widen(w_rows[r][k]) * Widen(x_rows[m][k]);
      a.y[(m0 + m) * a.n + n + r] = a.b != nullptr ? sum + a.b[n + r] : sum;
    }
  }
}

template <int M, int R>
void SpanBf16Dot(const Bf16DotArgs& a, int64_t m0, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + R <= n1; n += R) TileBf16Dot<M, R>(a, m0, n);
  for (; n < n1; ++n) TileBf16Dot<M, 1>(a, m0, n);
}

void RowsBf16Dot(const Bf16DotArgs& a, int64_t m0, int64_t rows, int64_t n0, int64_t n1) {
  switch (rows) {
    case 1:
      return SpanBf16Dot<1, 12>(a, m0, n0, n1);
    case 2:
      return SpanBf16Dot<2, 12>(a, m0, n0, n1);
    case 3:
      return SpanBf16Dot<3, 8>(a, m0, n0, n1);
    default:
      return SpanBf16Dot<4, 6>(a, m0, n0, n1);
  }
}

// Rows of x per pass over a chunk of weights, with either ISA.
constexpr int64_t kRowsPerPass = 4;

at::Tensor AtenLinear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  if (x.size(0) == 1) {
    at::Tensor y = b.defined() ? at::addmv(b, w, x[0]) : at::mv(w, x[0]);
    return y.unsqueeze(0);
  }
  return b.defined() ? at::addmm(b, x, w.t()) : at::mm(x, w.t());
}

}  // namespace

bool CpuLinearUsesKernel(int64_t rows, at::ScalarType weight_dtype) {
  // One row: the AVX-512 tile (1 x 12 weight rows, prefetched) measured 5% faster than
  // sgemv on Zen 5; the AVX2 one has too few accumulators to be, so sgemv keeps fp32
  // weights. 16-bit weights stay on the kernel: sgemv would need them widened first.
  const Isa isa = KernelIsa();
  const int64_t fewest = isa == Isa::kAvx512 || weight_dtype != at::kFloat ? 1 : 2;
  return rows >= fewest && rows <= kCpuLinearMaxRows && isa != Isa::kNone;
}

const char* CpuLinearKernelName() {
  switch (KernelIsa()) {
    case Isa::kAvx512:
      return "AVX-512";
    case Isa::kAvx2:
      return "AVX2+FMA";
    default:
      return "none (BLAS only)";
  }
}

namespace {

// The kernel over every weight row: threads split the weight rows in chunks of at most
// 256 KiB, which stay in L2 while each pass over rows of x reads them, so the weights
// come from memory once. Chunks are whole tiles (24 rows: a multiple of every tile's
// 2-12 weight rows), and at least 8 per thread, so that an uneven split costs little.
template <typename Pass>
void RunKernel(int64_t rows, int64_t n, int64_t k, size_t weight_bytes, const Pass& pass_fn) {
  constexpr int64_t kTileRows = 24;
  const int64_t fits_l2 = (256 * 1024 / static_cast<int64_t>(weight_bytes)) / k;
  const int64_t balanced = n / (8 * std::max(1, at::get_num_threads()));
  const int64_t chunk = std::max(kTileRows, std::min(fits_l2, balanced) / kTileRows * kTileRows);
  at::parallel_for(0, (n + chunk - 1) / chunk, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t n0 = c * chunk;
      const int64_t n1 = std::min(n, n0 + chunk);
      for (int64_t m0 = 0; m0 < rows; m0 += kRowsPerPass) {
        pass_fn(m0, std::min(kRowsPerPass, rows - m0), n0, n1);
      }
    }
  });
}

template <typename W>
void RunKernel(const LinearArgs<W>& args, int64_t rows) {
  const bool avx512 = KernelIsa() == Isa::kAvx512;
  RunKernel(rows, args.n, args.k, sizeof(W), [&](int64_t m0, int64_t pass, int64_t n0, int64_t n1) {
    if (avx512) {
      RowsAvx512(args, m0, pass, n0, n1);
    } else {
      RowsAvx2(args, m0, pass, n0, n1);
    }
  });
}

// Whether the CPU has bf16 dot products (AVX512-BF16) for ATen's bf16 product to use;
// KVPOOL_CPU_BF16=convert answers no (the path of CPUs without them, for tests).
bool NativeBf16() {
  static const bool native = [] {
    const char* choice = std::getenv("KVPOOL_CPU_BF16");
    if (choice != nullptr && std::strcmp(choice, "convert") == 0) return false;
    return __builtin_cpu_supports("avx512bf16") != 0;
  }();
  return native;
}

// bf16 weights beyond the kernel's rows. With AVX512-BF16: ATen's bf16 product (oneDNN
// on the bf16 dot products), x rounded to bf16, fp32 accumulation, the result widened
// back and the fp32 bias added. Without: the weights widened to fp32 (exact) and the
// fp32 product, the kernel's arithmetic.
at::Tensor AtenLinearBf16(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  if (!NativeBf16()) return AtenLinear(x.to(at::kFloat), w.to(at::kFloat), b);
  at::Tensor y = at::mm(x.to(at::kBFloat16), w.t()).to(at::kFloat);
  if (b.defined()) y.add_(b.to(at::kFloat));
  return y;
}

}  // namespace

// What the startup line says of packed products: which kernel runs them.
static std::string PackedProductsAre() {
  return CpuHasAmxBf16() ? ", packed for AMX tiles (4 rows or more) and AVX512-BF16 products"
                         : ", packed for AVX512-BF16 products";
}

bool CpuPacksBf16Weights() {
  return NativeBf16() && KernelIsa() == Isa::kAvx512 && __builtin_cpu_supports("avx512bw") != 0;
}

bool CpuPacksFp16Weights() { return KernelIsa() == Isa::kAvx512; }

bool CpuLinearBf16KeepsFp32Activations(int64_t rows) {
  if (!NativeBf16()) return true;  // the widening kernel, or the fp32 product
  return CpuLinearUsesKernel(rows, at::kBFloat16) && rows <= kBf16KernelMaxRows &&
         KernelIsa() != Isa::kAvx512;
}

StatusOr<at::ScalarType> CpuWeightDtype(const std::string& name, std::string* why) {
  if (name == "fp32" || name == "bf16") {
    *why = name + " weights (asked for)";
    if (name == "bf16" && !NativeBf16()) {
      *why += "; this CPU has no AVX512-BF16: products of many rows are converted to fp32";
    } else if (name == "bf16" && CpuPacksBf16Weights()) {
      *why += PackedProductsAre();
    }
    return name == "bf16" ? at::kBFloat16 : at::kFloat;
  }
  if (name == "fp16") {
    if (CpuPacksFp16Weights()) {
      *why =
          "fp16 weights (asked for), packed for AVX-512 products: widened to fp32 in registers "
          "by vcvtph2ps, fp32 sums";
    } else if (KernelIsa() != Isa::kNone) {
      *why = "fp16 weights (asked for), widened to fp32 in registers by F16C (vcvtph2ps) up to " +
             std::to_string(kCpuLinearMaxRows) + " rows, fp32 products";
    } else {
      *why = std::string("fp16 weights (asked for); no kernel of ours runs here (") +
             (std::getenv("KVPOOL_CPU_LINEAR") != nullptr ? "KVPOOL_CPU_LINEAR"
                                                          : "the CPU has no AVX2, FMA and F16C") +
             "): every product converts them to fp32 first";
    }
    return at::kHalf;
  }
  if (name != "auto") {
    return InvalidArgument("--weight-dtype must be fp32, bf16, fp16 or auto, got '" + name + "'");
  }
  if (NativeBf16()) {
    *why = CpuPacksBf16Weights()
               ? "bf16 weights (auto: the CPU has AVX512-BF16)" + PackedProductsAre()
               : "bf16 weights (auto: the CPU has AVX512-BF16)";
    return at::kBFloat16;
  }
  if (CpuPacksFp16Weights()) {
    // Half the bytes of fp32 at fp32's arithmetic: on a Zen 4 (whose fp16 kernel uses no
    // BF16 instruction) a batch-1 step took 0.39x and a 200-token prefill 0.64x fp32's.
    *why =
        "fp16 weights (auto: the CPU has AVX-512 but no AVX512-BF16), packed for AVX-512 "
        "products: widened to fp32 in registers by vcvtph2ps, fp32 sums";
    return at::kHalf;
  }
  *why =
      "fp32 weights (auto: the CPU has neither AVX512-BF16 nor AVX-512; --weight-dtype bf16 "
      "still runs, its products of many rows converted to fp32)";
  return at::kFloat;
}

at::Tensor CpuLinear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  const int64_t rows = x.size(0);
  const bool bf16 = w.scalar_type() == at::kBFloat16;
  const bool fp16 = w.scalar_type() == at::kHalf;
  const bool fits = x.device().is_cpu() && x.scalar_type() == at::kFloat &&
                    (w.scalar_type() == at::kFloat || bf16 || fp16) && w.is_contiguous() &&
                    x.stride(1) == 1 &&
                    (!b.defined() || (b.scalar_type() == at::kFloat && b.is_contiguous()));
  const bool kernel =
      fits && CpuLinearUsesKernel(rows, w.scalar_type()) && (!bf16 || rows <= kBf16KernelMaxRows);
  if (!kernel) {
    if (bf16) return AtenLinearBf16(x, w, b);
    // fp16: ATen 1.13 has no fast CPU product of halves; the fp32 one of the widened
    // weights (exact) is the kernel's arithmetic.
    return fp16 ? AtenLinear(x.to(at::kFloat), w.to(at::kFloat), b) : AtenLinear(x, w, b);
  }
  const int64_t n = w.size(0);
  at::Tensor y = at::empty({rows, n}, x.options());
  const float* bias = b.defined() ? b.data_ptr<float>() : nullptr;
  if (bf16 && NativeBf16() && KernelIsa() == Isa::kAvx512) {
    const at::Tensor xb = x.to(at::kBFloat16).contiguous();
    const Bf16DotArgs args{reinterpret_cast<const uint16_t*>(xb.data_ptr<at::BFloat16>()),
                           reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>()),
                           w.size(1),
                           bias,
                           y.data_ptr<float>(),
                           n};
    RunKernel(rows, n, w.size(1), 2, [&](int64_t m0, int64_t pass, int64_t n0, int64_t n1) {
      RowsBf16Dot(args, m0, pass, n0, n1);
    });
  } else if (bf16) {
    RunKernel(LinearArgs<uint16_t>{x.data_ptr<float>(), x.stride(0),
                                   reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>()),
                                   w.size(1), bias, y.data_ptr<float>(), n},
              rows);
  } else if (fp16) {
    RunKernel(LinearArgs<Fp16>{x.data_ptr<float>(), x.stride(0),
                               reinterpret_cast<const Fp16*>(w.data_ptr<at::Half>()), w.size(1),
                               bias, y.data_ptr<float>(), n},
              rows);
  } else {
    RunKernel(LinearArgs<float>{x.data_ptr<float>(), x.stride(0), w.data_ptr<float>(), w.size(1),
                                bias, y.data_ptr<float>(), n},
              rows);
  }
  return y;
}

}  // namespace kvpool
