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
// tile(M, J, fetch, m0, j0, ahead) with M (rows, 1-8) and J (blocks, 3 or 1) as
// std::integral_constant<int, ...> and fetch (below) as std::bool_constant, so that the
// tile is a template of all three. Threads
// split the blocks in chunks of three; a chunk's weights stay in L2 while every tile of
// rows reads them, so they come from memory once per product.
//
// Fetching ahead: the first tile of a chunk reads the chunk's weights from memory as
// fast as it computes, over half the DRAM's rate per core at gpt2's shapes on Zen 4, so
// the DRAM sets its pace; the later tiles read them from L2 and leave the DRAM idle. So
// in products of 2-4 tiles of rows (9-32 rows: decode batches), the tiles after the
// first fetch the chunk their thread takes next into L2, one 64-byte line per step along
// K from `ahead` on (fetch true; false: ahead is nullptr). `weights` is the packed matrix, whose
// chunks lie one after another, `chunk_bytes` long; a tile takes `steps` steps (bf16: a
// step per line of a block, so three tiles fetch a whole chunk; fp16: two). Beyond 4
// tiles a chunk's weights are reused enough that the first tile's wait matters little,
// and the fetched chunk would crowd the rows of x out of L2 (a 130-token prefill got
// slower when every tile fetched). A tile's last lines may run past the matrix: a
// prefetch never faults.
constexpr int64_t kAheadTiles = 3;     // at most this many tiles fetch the next chunk
constexpr int64_t kAheadMaxTiles = 4;  // in products of at most this many tiles of rows

template <typename TileFn>
void ForEachTile(int64_t rows, int64_t blocks, const void* weights, int64_t chunk_bytes,
                 int64_t steps, const TileFn& tile) {
  const auto of_rows = [&](auto j, auto fetch, int64_t m0, int64_t m, int64_t j0,
                           const char* ahead) {
    switch (m) {
      case 1:
        return tile(std::integral_constant<int, 1>{}, j, fetch, m0, j0, ahead);
      case 2:
        return tile(std::integral_constant<int, 2>{}, j, fetch, m0, j0, ahead);
      case 3:
        return tile(std::integral_constant<int, 3>{}, j, fetch, m0, j0, ahead);
      case 4:
        return tile(std::integral_constant<int, 4>{}, j, fetch, m0, j0, ahead);
      case 5:
        return tile(std::integral_constant<int, 5>{}, j, fetch, m0, j0, ahead);
      case 6:
        return tile(std::integral_constant<int, 6>{}, j, fetch, m0, j0, ahead);
      case 7:
        return tile(std::integral_constant<int, 7>{}, j, fetch, m0, j0, ahead);
      default:
        return tile(std::integral_constant<int, kTileRows>{}, j, fetch, m0, j0, ahead);
    }
  };
  const int64_t chunks = (blocks + kTileBlocks - 1) / kTileBlocks;
  // The tiles of rows after a chunk's first that fetch the next one, a line a step each.
  const int64_t tiles = (rows + kTileRows - 1) / kTileRows;
  const int64_t fetching = tiles <= kAheadMaxTiles ? std::min(tiles - 1, kAheadTiles) : 0;
  const auto* base = static_cast<const char*>(weights);
  const int64_t size = blocks * chunk_bytes / kTileBlocks;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t j0 = c * kTileBlocks;
      const int64_t full = std::min<int64_t>(kTileBlocks, blocks - j0);
      for (int64_t m0 = 0, t = 0; m0 < rows; m0 += kTileRows, ++t) {
        const int64_t m = std::min<int64_t>(kTileRows, rows - m0);
        if (full == kTileBlocks) {
          // Tile t fetches lines [(t - 1) steps, t steps) of the next chunk of this
          // thread's range, where it has one and they are in the matrix.
          const int64_t skip = (t - 1) * steps * 64, from = (c + 1) * chunk_bytes + skip;
          const bool fetch =
              t >= 1 && t <= fetching && c + 1 < c1 && skip < chunk_bytes && from < size;
          const std::integral_constant<int, kTileBlocks> three;
          if (fetch) {
            of_rows(three, std::true_type{}, m0, m, j0, base + from);
          } else {
            of_rows(three, std::false_type{}, m0, m, j0, nullptr);
          }
        } else {
          for (int64_t j = j0; j < j0 + full; ++j)
            of_rows(std::integral_constant<int, 1>{}, std::false_type{}, m0, m, j, nullptr);
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
