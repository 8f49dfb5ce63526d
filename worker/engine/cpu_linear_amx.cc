// The packed bf16 product on AMX tiles: see cpu_linear_amx.h.
#include "engine/cpu_linear_amx.h"

// GCC 12's AVX-512 headers build some intrinsics on _mm512_undefined_*(), which
// -Wuninitialized flags wherever they inline (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <ATen/Parallel.h>
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace kvpool {
namespace {

constexpr int64_t kCols = 16;   // columns per packed block: one B tile's width
constexpr int64_t kKStep = 32;  // K per step: an A tile row is 32 bf16 (64 bytes)
constexpr int kTileRows = 16;   // rows of x per A tile
constexpr int64_t kXBytesPerPass = int64_t{512} << 10;  // of x, per pass over the weights

// Linux's arch_prctl codes for the AMX tile data permission (asm/prctl.h and
// asm/fpu/types.h, which glibc does not export).
constexpr long kArchReqXcompPerm = 0x1023;
constexpr long kXfeatureXtiledata = 18;

// The 64-byte operand of LDTILECFG (palette 1).
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64);

// Tiles 0-3 hold sums (row tile r and column block j in tile 2r + j), 4-5 rows of x,
// 6-7 weights. rows1 == 0 leaves the second row tile unconfigured (not used).
TileConfig Config(int rows0, int rows1) {
  TileConfig c;
  for (const int t : {0, 1, 4}) {
    c.rows[t] = static_cast<uint8_t>(rows0);
    c.colsb[t] = 64;
  }
  if (rows1 > 0) {
    for (const int t : {2, 3, 5}) {
      c.rows[t] = static_cast<uint8_t>(rows1);
      c.colsb[t] = 64;
    }
  }
  for (const int t : {6, 7}) {
    c.rows[t] = kKStep / 2;  // pairs of K
    c.colsb[t] = 64;         // 16 columns x 2 bf16
  }
  return c;
}

// LDTILECFG and TILERELEASE as inline assembly, like GCC's tile load, store and
// multiply macros: its _tile_release() is an always_inline function that needs
// target("amx-tile"), which the parallel_for lambda cannot carry, and the file must
// build where -march=native has no AMX.
void LoadConfig(const TileConfig& c) { __asm__ volatile("ldtilecfg %0" ::"m"(c)); }
void ReleaseTiles() { __asm__ volatile("tilerelease" ::); }

struct Args {
  const uint16_t* x;  // [rows, k] bf16
  const uint16_t* w;  // packed: block j at j * 16 * k
  int64_t k;
  packed::Epilogue e;
  float* y;  // [rows, n]
  int64_t n;
};

// The sums of one row tile and column block into y through the epilogue, padding
// columns dropped.
__attribute__((target("avx512f"))) void Store(const Args& a, const float (*sums)[kCols],
                                              int64_t row, int rows, int64_t block) {
  const int64_t col = block * kCols;
  const __mmask16 keep = packed::KeepMask(col, a.n);
  for (int i = 0; i < rows; ++i) {
    packed::Finish(a.e, _mm512_load_ps(sums[i]), keep, col, a.y + (row + i) * a.n + col);
  }
}

// Rows [m0, m0 + rows0 + rows1) of x (one or two row tiles, as configured) against
// column blocks j0 and, with kTwoBlocks, j0 + 1.
template <bool kTwoRowTiles, bool kTwoBlocks>
void Step(const Args& a, int64_t m0, int rows0, int rows1, int64_t j0) {
  _tile_zero(0);
  if constexpr (kTwoBlocks) _tile_zero(1);
  if constexpr (kTwoRowTiles) _tile_zero(2);
  if constexpr (kTwoRowTiles && kTwoBlocks) _tile_zero(3);
  const uint16_t* x0 = a.x + m0 * a.k;
  const uint16_t* x1 = x0 + kTileRows * a.k;
  const uint16_t* w0 = a.w + j0 * kCols * a.k;
  const uint16_t* w1 = w0 + kCols * a.k;
  const long x_stride = static_cast<long>(a.k * 2);
  for (int64_t kk = 0; kk < a.k; kk += kKStep) {
    // Pairs kk/2 .. kk/2 + 15 of a block: 16 rows of 64 bytes from element kk * 16.
    _tile_loadd(6, w0 + kk * kCols, 64);
    _tile_loadd(4, x0 + kk, x_stride);
    if constexpr (kTwoBlocks) _tile_loadd(7, w1 + kk * kCols, 64);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (kTwoRowTiles) _tile_loadd(5, x1 + kk, x_stride);
    if constexpr (kTwoBlocks) _tile_dpbf16ps(1, 4, 7);
    if constexpr (kTwoRowTiles) _tile_dpbf16ps(2, 5, 6);
    if constexpr (kTwoRowTiles && kTwoBlocks) _tile_dpbf16ps(3, 5, 7);
  }
  alignas(64) float sums[4][kTileRows][kCols];
  _tile_stored(0, sums[0], 64);
  if constexpr (kTwoBlocks) _tile_stored(1, sums[1], 64);
  if constexpr (kTwoRowTiles) _tile_stored(2, sums[2], 64);
  if constexpr (kTwoRowTiles && kTwoBlocks) _tile_stored(3, sums[3], 64);
  Store(a, sums[0], m0, rows0, j0);
  if constexpr (kTwoBlocks) Store(a, sums[1], m0, rows0, j0 + 1);
  if constexpr (kTwoRowTiles) Store(a, sums[2], m0 + kTileRows, rows1, j0);
  if constexpr (kTwoRowTiles && kTwoBlocks) Store(a, sums[3], m0 + kTileRows, rows1, j0 + 1);
}

void Group(const Args& a, int64_t m0, int rows0, int rows1, int64_t j0, bool two_blocks) {
  if (rows1 > 0) {
    return two_blocks ? Step<true, true>(a, m0, rows0, rows1, j0)
                      : Step<true, false>(a, m0, rows0, rows1, j0);
  }
  return two_blocks ? Step<false, true>(a, m0, rows0, 0, j0)
                    : Step<false, false>(a, m0, rows0, 0, j0);
}

}  // namespace

bool AmxBf16Usable() {
  static const bool usable = [] {
    const char* choice = std::getenv("KVPOOL_CPU_AMX");
    if (choice != nullptr && std::strcmp(choice, "off") == 0) return false;
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) == 0) return false;
    const bool tile = (edx & (1u << 24)) != 0, bf16 = (edx & (1u << 22)) != 0;
    if (!tile || !bf16 || __builtin_cpu_supports("avx512f") == 0) return false;
    // Fails where the kernel (or the hypervisor's XCR0) does not offer the tile state.
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return usable;
}

void AmxPackedProduct(const uint16_t* x, const uint16_t* w, int64_t rows, int64_t k, int64_t blocks,
                      const packed::Epilogue& e, float* y, int64_t n) {
  const Args a{x, w, k, e, y, n};
  // Threads split pairs of column blocks; each runs its pairs through the groups of
  // 32 rows of a pass, so a pair's weights stay in L2 while x streams past them. Groups
  // of 32 rows first, then the last, shorter one under its own tile configuration.
  const int64_t full = rows / (2 * kTileRows);
  const int tail = static_cast<int>(rows % (2 * kTileRows));
  // Many rows (a long prompt) go in passes of as many groups as keep that many rows of
  // x in L2 beside the weights: past it every pair of column blocks would read all of
  // x from L3 or memory again (3 MB for 2048 rows of gpt2's 768).
  const int64_t groups_per_pass = std::max<int64_t>(
      1, kXBytesPerPass / (2 * kTileRows * k * static_cast<int64_t>(sizeof(uint16_t))));
  at::parallel_for(0, (blocks + 1) / 2, 1, [&](int64_t c0, int64_t c1) {
    if (full > 0) {
      LoadConfig(Config(kTileRows, kTileRows));
      for (int64_t g0 = 0; g0 < full; g0 += groups_per_pass) {
        const int64_t g1 = std::min(full, g0 + groups_per_pass);
        for (int64_t c = c0; c < c1; ++c) {
          for (int64_t g = g0; g < g1; ++g) {
            Group(a, g * 2 * kTileRows, kTileRows, kTileRows, 2 * c, 2 * c + 1 < blocks);
          }
        }
      }
    }
    if (tail > 0) {
      const int rows0 = std::min(tail, kTileRows), rows1 = tail - rows0;
      LoadConfig(Config(rows0, rows1));
      for (int64_t c = c0; c < c1; ++c) {
        Group(a, full * 2 * kTileRows, rows0, rows1, 2 * c, 2 * c + 1 < blocks);
      }
    }
    ReleaseTiles();
  });
}

}  // namespace kvpool
