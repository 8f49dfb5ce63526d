// The packed bf16 product on AMX tiles (Intel Sapphire Rapids and later): the layout
// PackBf16 writes (cpu_linear_packed.h, [N / 16][K / 2][16][2]) is the one AMX's
// TDPBF16PS reads for its second operand, so a block of 16 columns and 32 of K is one
// contiguous 1 KiB tile. Each step multiplies up to 32 rows of x (two A tiles) by 32
// columns (two B tiles) into four 16 x 16 fp32 accumulator tiles: 1024 multiply-adds per
// cycle per core against AVX512-BF16's 64. Internal to cpu_linear_packed.cc, which
// chooses between this and its AVX512-BF16 kernel.
#pragma once

#include <cstdint>

#include "engine/cpu_linear_epilogue.h"

namespace kvpool {

// Whether the CPU has AMX-BF16 and the kernel lets this process use the tile data
// (Linux asks for arch_prctl(ARCH_REQ_XCOMP_PERM) first; asked once, here).
// KVPOOL_CPU_AMX=off answers no, for comparisons and for the AVX512-BF16 path's tests.
bool AmxBf16Usable();

// y [rows, n] fp32 = x [rows, k] bf16 (rows k apart) * W^T, W packed (blocks of 16
// columns, the last padded) with k a multiple of 32, finished by `e` (bias, GELU,
// residual add). Splits the column blocks over ATen's threads.
void AmxPackedProduct(const uint16_t* x, const uint16_t* w, int64_t rows, int64_t k, int64_t blocks,
                      const packed::Epilogue& e, float* y, int64_t n);

}  // namespace kvpool
