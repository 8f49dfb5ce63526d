// The packed bf16 product: see cpu_linear_packed.h.
#include "engine/cpu_linear_packed.h"

// GCC 12's AVX-512 headers build some intrinsics on _mm512_undefined_*(), which
// -Wuninitialized flags wherever they inline (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <new>
#include <stdexcept>

#include "engine/cpu_linear_amx.h"
#include "engine/cpu_linear_epilogue.h"
#include "engine/cpu_linear_packed_tiles.h"

namespace kvpool {
namespace {

using packed::kCols;

// Element (row r, column c) of W in the packed layout, for N x K.
inline int64_t PackedIndex(int64_t r, int64_t c, int64_t k) {
  return (((r / kCols) * (k / 2) + c / 2) * kCols + r % kCols) * 2 + c % 2;
}

struct Args {
  const uint16_t* x;  // [M, K] bf16, contiguous
  const uint16_t* w;  // packed
  int64_t k;
  packed::Epilogue e;
  float* y;   // [M, N]
  int64_t n;  // N: columns of y (the packed rows past it are zero padding)
};

// Rows [m0, m0 + M) of x against column blocks [j0, j0 + J): M x J chains of
// vdpbf16ps, each block's weights read once per tile as one sequential stream. kFetch:
// each step also fetches the next line of the chunk after this one from `next` on
// (ForEachTile).
template <int M, int J, bool kFetch>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void Tile(const Args& a, int64_t m0,
                                                                 int64_t j0, const char* next) {
  __m512 acc[M][J];
  for (int m = 0; m < M; ++m) {
    for (int j = 0; j < J; ++j) acc[m][j] = _mm512_setzero_ps();
  }
  const int64_t pairs = a.k / 2;
  const uint16_t* w[J];
  for (int j = 0; j < J; ++j) w[j] = a.w + (j0 + j) * pairs * 2 * kCols;
  const uint16_t* x = a.x + m0 * a.k;
  for (int64_t p = 0; p < pairs; ++p) {
    if constexpr (kFetch) {
      _mm_prefetch(next, _MM_HINT_T1);
      next += 64;
    }
    __m512bh wv[J];
    for (int j = 0; j < J; ++j) {
      _mm_prefetch(reinterpret_cast<const char*>(w[j] + p * 2 * kCols) + 1024, _MM_HINT_T0);
      wv[j] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(w[j] + p * 2 * kCols));
    }
    for (int m = 0; m < M; ++m) {
      int32_t pair;
      std::memcpy(&pair, x + m * a.k + p * 2, sizeof(pair));
      const __m512bh xv = reinterpret_cast<__m512bh>(_mm512_set1_epi32(pair));
      for (int j = 0; j < J; ++j) acc[m][j] = _mm512_dpbf16_ps(acc[m][j], wv[j], xv);
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

struct PackedArena::Mapping {
  void* base = nullptr;
  size_t size = 0;
  ~Mapping() { munmap(base, size); }
};

PackedArena::PackedArena(size_t bytes) : size_(bytes) {
  constexpr size_t kHugePage = size_t{2} << 20, kPage = size_t{4} << 10;
  if (bytes < kHugePage) return;
  // Fresh pages from mmap (the heap's may have been touched, and so be 4 KiB already),
  // starting on a 2 MiB boundary: the mapping is made 2 MiB longer and its ends
  // trimmed. The length is not rounded up to 2 MiB: the last part short of a huge page
  // stays in 4 KiB pages rather than taking memory nothing uses.
  const size_t size = (bytes + kPage - 1) / kPage * kPage;
  void* mapped =
      mmap(nullptr, size + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapped == MAP_FAILED) throw std::bad_alloc();
  const auto start = reinterpret_cast<uintptr_t>(mapped);
  const uintptr_t aligned = (start + kHugePage - 1) / kHugePage * kHugePage;
  if (aligned > start) munmap(mapped, aligned - start);
  if (const size_t tail = start + kHugePage - aligned; tail > 0) {
    munmap(reinterpret_cast<void*>(aligned + size), tail);
  }
  mapping_ = std::make_shared<Mapping>();
  mapping_->base = reinterpret_cast<void*>(aligned);
  mapping_->size = size;
  // Advice only: where transparent huge pages are off, the pages stay 4 KiB. They read
  // as zeros.
  madvise(mapping_->base, size, MADV_HUGEPAGE);
}

size_t PackedArena::Footprint(int64_t n, int64_t k) {
  constexpr size_t kPage = size_t{4} << 10;
  const size_t bytes = static_cast<size_t>((n + kCols - 1) / kCols * kCols * k) * 2;
  return (bytes + kPage - 1) / kPage * kPage;
}

at::Tensor PackedArena::Zeroed(int64_t rows, int64_t k, const at::TensorOptions& options) {
  const size_t footprint = Footprint(rows, k);
  if (footprint > size_ - used_) {
    throw std::logic_error("PackedArena: a matrix past the room the arena was made with");
  }
  if (mapping_ == nullptr) {
    used_ += footprint;
    return at::zeros({rows, k}, options);
  }
  void* memory = static_cast<char*>(mapping_->base) + used_;
  used_ += footprint;
  return at::from_blob(
      memory, {rows, k}, [mapping = mapping_](void*) {}, options);
}

bool CanPackBf16(const at::Tensor& w) {
  return w.dim() == 2 && w.scalar_type() == at::kBFloat16 && w.is_contiguous() && w.size(0) > 0 &&
         w.size(1) > 0 && w.size(1) % 2 == 0;
}

at::Tensor PackBf16(const at::Tensor& w, PackedArena* arena) {
  TORCH_CHECK(CanPackBf16(w), "PackBf16: a contiguous bf16 [N, K] with K even");
  const int64_t n = w.size(0), k = w.size(1);
  PackedArena own(arena == nullptr ? PackedArena::Footprint(n, k) : 0);
  at::Tensor packed =
      (arena == nullptr ? own : *arena).Zeroed((n + kCols - 1) / kCols * kCols, k, w.options());
  const auto* src = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
  auto* dst = reinterpret_cast<uint16_t*>(packed.data_ptr<at::BFloat16>());
  packed::PackElements(src, dst, n, k, [k](int64_t r, int64_t c) { return PackedIndex(r, c, k); });
  return packed;
}

at::Tensor UnpackBf16(const at::Tensor& packed, int64_t n) {
  TORCH_CHECK(CanPackBf16(packed) && packed.size(0) % kCols == 0 && n > packed.size(0) - kCols &&
                  n <= packed.size(0),
              "UnpackBf16: not a packed bf16 matrix of ", n, " rows");
  const int64_t k = packed.size(1);
  at::Tensor w = at::empty({n, k}, packed.options());
  const auto* src = reinterpret_cast<const uint16_t*>(packed.data_ptr<at::BFloat16>());
  auto* dst = reinterpret_cast<uint16_t*>(w.data_ptr<at::BFloat16>());
  packed::UnpackElements(src, dst, n, k,
                         [k](int64_t r, int64_t c) { return PackedIndex(r, c, k); });
  return w;
}

bool CpuHasAmxBf16() { return AmxBf16Usable(); }

at::Tensor CpuLinearPackedBf16(const at::Tensor& x, const at::Tensor& packed, int64_t n,
                               const at::Tensor& b, PackedKernel kernel,
                               const PackedEpilogue& epilogue) {
  TORCH_CHECK(CanPackBf16(packed) && packed.size(0) % kCols == 0 && n > packed.size(0) - kCols &&
                  n <= packed.size(0) && x.dim() == 2 && x.size(1) == packed.size(1) &&
                  (!b.defined() || b.numel() == n),
              "CpuLinearPackedBf16: x [M, K] against a packed [N, K] of ", n, " rows");
  const int64_t rows = x.size(0);
  const at::Tensor& residual = epilogue.residual;
  TORCH_CHECK(!residual.defined() ||
                  (residual.scalar_type() == at::kFloat && residual.is_contiguous() &&
                   residual.dim() == 2 && residual.size(0) == rows && residual.size(1) == n),
              "CpuLinearPackedBf16: the residual must be a contiguous fp32 [", rows, ", ", n, "]");
  const at::Tensor xb = x.to(at::kBFloat16).contiguous();
  const at::Tensor bias = b.defined() ? b.to(at::kFloat).contiguous() : b;
  at::Tensor y =
      residual.defined() ? residual : at::empty({rows, n}, x.options().dtype(at::kFloat));
  const Args a{
      reinterpret_cast<const uint16_t*>(xb.data_ptr<at::BFloat16>()),
      reinterpret_cast<const uint16_t*>(packed.data_ptr<at::BFloat16>()),
      packed.size(1),
      {bias.defined() ? bias.data_ptr<float>() : nullptr, epilogue.gelu_tanh, residual.defined()},
      y.data_ptr<float>(),
      n};
  const int64_t blocks = packed.size(0) / kCols;
  const bool amx_fits = packed.size(1) % 32 == 0 && AmxBf16Usable();
  TORCH_CHECK(kernel != PackedKernel::kAmx || amx_fits,
              "CpuLinearPackedBf16: the AMX kernel needs AMX-BF16 and K a multiple of 32");
  if (kernel == PackedKernel::kAmx ||
      (kernel == PackedKernel::kAuto && amx_fits && rows >= kAmxMinRows)) {
    AmxPackedProduct(a.x, a.w, rows, a.k, blocks, a.e, a.y, n);
    return y;
  }
  // A chunk: three blocks of [K/2][16][2] bf16, one after another.
  const int64_t chunk_bytes = packed::kTileBlocks * kCols * a.k * 2;
  packed::ForEachTile(rows, blocks, a.w, chunk_bytes, /*steps=*/a.k / 2,
                      [&](auto m, auto j, auto fetch, int64_t m0, int64_t j0, const char* ahead) {
                        Tile<decltype(m)::value, decltype(j)::value, decltype(fetch)::value>(
                            a, m0, j0, ahead);
                      });
  return y;
}

}  // namespace kvpool
