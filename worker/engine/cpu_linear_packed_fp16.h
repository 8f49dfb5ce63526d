// fp16 weights packed for products on AVX-512 (--weight-dtype fp16): W [N, K] stored as
// [N / 16][K][16], so a 32-byte load holds one k of 16 output columns. vcvtph2ps widens
// it to 16 fp32 (exact: every fp16 value is an fp32 value) and one FMA against a
// broadcast x[m][k] adds those 16 columns' partial sums for row m. As in the bf16 packed
// product (cpu_linear_packed.h), nothing is reduced across lanes, each weight vector is
// widened once for a tile of up to 8 rows of x, and the epilogue (bias, GPT-2's GELU,
// the residual add) runs on the sums in registers. x and the sums stay fp32, so the
// result is the fp32 product of the fp16 values to fp32 rounding.
//
// The CPU model packs its fp16 matrices at load where CpuPacksFp16Weights() holds (an
// AVX-512 CPU; N is padded with zero rows to a multiple of 16); every product of such a
// matrix, decode or prefill, then goes through CpuLinearPackedFp16.
#pragma once

#include <ATen/core/Tensor.h>

#include "engine/cpu_linear_packed.h"

namespace kvpool {

// Whether `w` is a contiguous 2-D fp16 matrix [N, K].
bool CanPackFp16(const at::Tensor& w);
// The packed layout of `w`: an fp16 tensor [N rounded up to 16, K] whose elements only
// CpuLinearPackedFp16 can read; in `arena` (cpu_linear_packed.h) where given, else in
// an arena of its own.
at::Tensor PackFp16(const at::Tensor& w, PackedArena* arena = nullptr);
// The packed matrix's first `n` rows back in row order (for tests and checks).
at::Tensor UnpackFp16(const at::Tensor& packed, int64_t n);
// y [M, n] fp32 = x [M, K] (fp32) * W^T + b, W [n, K] packed by PackFp16, b [n] or
// undefined, then the epilogue. Needs AVX-512 (CpuPacksFp16Weights()).
at::Tensor CpuLinearPackedFp16(const at::Tensor& x, const at::Tensor& packed, int64_t n,
                               const at::Tensor& b, const PackedEpilogue& epilogue = {});

}  // namespace kvpool
