// What the vector packed products share (cpu_linear_packed.cc: bf16 on AVX512-BF16;
// cpu_linear_packed_fp16.cc: fp16 on AVX-512): output columns in blocks of 16, tiles of
// up to 8 rows of x by 3 column blocks (8 x 3 sums + 3 weights + 1 x in 32 zmm), the
// threads' split of the blocks, and the copy of a matrix into a packed layout and back.
// Internal to those kernels.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace kvpool::packed {

constexpr int64_t kCols = 16;  // output columns per block: one zmm of fp32 sums
constexpr int kTileRows = 8;
constexpr int kTileBlocks = 3;

// Every tile of a product of `rows` rows of x over `blocks` column blocks, as
// tile(M, J, m0, j0) with M (rows, 1-8) and J (blocks, 3 or 1) as
// std::integral_constant<int, ...>, so that the tile is a template of both. Threads
// split the blocks in chunks of three; a chunk's weights stay in L2 while every tile of
// rows reads them, so they come from memory once per product.
template <typename TileFn>
void ForEachTile(int64_t rows, int64_t blocks, const TileFn& tile) {
  const auto of_rows = [&](auto j, int64_t m0, int64_t m, int64_t j0) {
    switch (m) {
      case 1:
        return tile(std::integral_constant<int, 1>{}, j, m0, j0);
      case 2:
        return tile(std::integral_constant<int, 2>{}, j, m0, j0);
      case 3:
        return tile(std::integral_constant<int, 3>{}, j, m0, j0);
      case 4:
        return tile(std::integral_constant<int, 4>{}, j, m0, j0);
      case 5:
        return tile(std::integral_constant<int, 5>{}, j, m0, j0);
      case 6:
        return tile(std::integral_constant<int, 6>{}, j, m0, j0);
      case 7:
        return tile(std::integral_constant<int, 7>{}, j, m0, j0);
      default:
        return tile(std::integral_constant<int, kTileRows>{}, j, m0, j0);
    }
  };
  const int64_t chunks = (blocks + kTileBlocks - 1) / kTileBlocks;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t j0 = c * kTileBlocks;
      const int64_t full = std::min<int64_t>(kTileBlocks, blocks - j0);
      for (int64_t m0 = 0; m0 < rows; m0 += kTileRows) {
        const int64_t m = std::min<int64_t>(kTileRows, rows - m0);
        if (full == kTileBlocks) {
          of_rows(std::integral_constant<int, kTileBlocks>{}, m0, m, j0);
        } else {
          for (int64_t j = j0; j < j0 + full; ++j)
            of_rows(std::integral_constant<int, 1>{}, m0, m, j);
        }
      }
    }
  });
}

// W [n, k] of 16-bit elements into a packed buffer of n rounded up to 16 rows (zeroed
// by the caller), element (r, c) at index(r, c); and the first n rows back.
template <typename Index>
void PackElements(const uint16_t* w, uint16_t* packed, int64_t n, int64_t k, const Index& index) {
  at::parallel_for(0, n, kCols, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t c = 0; c < k; ++c) packed[index(r, c)] = w[r * k + c];
    }
  });
}
template <typename Index>
void UnpackElements(const uint16_t* packed, uint16_t* w, int64_t n, int64_t k, const Index& index) {
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t c = 0; c < k; ++c) w[r * k + c] = packed[index(r, c)];
  }
}

}  // namespace kvpool::packed
