// y = x W^T + b on the CPU in float32, shaped for decode. A decode step multiplies
// a handful of rows (one per running sequence) by every weight matrix. OpenBLAS's
// sgemm packs the whole weight matrix on every call, which at 2-8 rows costs 3-4x
// the time of reading the weights once (gpt2 on 2 cores: 36 ms at 2 rows against
// 8 ms for one row through sgemv). CpuLinear streams each weight row once for all
// rows of x, with FMA chains in registers, up to kCpuLinearMaxRows rows; one row
// goes through sgemv and larger batches (prefill) through sgemm, where BLAS wins.
// Set KVPOOL_CPU_LINEAR=blas to send every shape to BLAS (for comparisons).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace kvpool {

// Up to this many rows the register-blocked kernel beats OpenBLAS sgemm (measured
// on gpt2's shapes: 1.3x at 32 rows, 1.0x near 40, slower above).
inline constexpr int64_t kCpuLinearMaxRows = 32;

// x [M, K] (rows may be strided, elements contiguous), w [N, K], b [N] or undefined.
// Any dtype or device works; the own kernel runs for float32 CPU tensors on CPUs
// with AVX2 and FMA, everything else goes through ATen.
at::Tensor CpuLinear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b);

// Whether CpuLinear uses its own kernel for `rows` rows in this process.
bool CpuLinearUsesKernel(int64_t rows);

}  // namespace kvpool
