// bf16 weights packed for AVX512-BF16's dot products (the layout oneDNN and vLLM's CPU
// kernels call VNNI): W [N, K] stored as [N / 16][K / 2][16][2], so a 64-byte load holds
// one pair of K for 16 output columns, and `vdpbf16ps` against a broadcast pair of x
// adds 16 columns' partial sums at once. Unlike the row-dot kernel (cpu_linear.cc),
// nothing is reduced across lanes at the end and the result is stored 16 columns at a
// time, so the arithmetic units stay busy at any number of rows: on gpt2's shapes at
// 32 rows, 2 threads of a Zen 4 core pair, 440 GFLOP/s against 257 for LibTorch 1.13's
// oneDNN bf16 product (docs/benchmarks.md). x is rounded to bf16, sums stay fp32, and
// the result is fp32 (oneDNN's is rounded to bf16). On CPUs with AMX the same layout
// feeds the tile multiply (cpu_linear_amx.h) for products of several rows.
//
// The CPU model packs its bf16 matrices at load where CpuPacksBf16Weights() holds and
// K is even (N is padded with zero rows to a multiple of 16: gpt2's head has 50257);
// every product of such a matrix, decode or prefill, then goes through
// CpuLinearPackedBf16.
#pragma once

#include <ATen/core/Tensor.h>

namespace kvpool {

// Whether `w` is a contiguous 2-D bf16 matrix [N, K] with K even.
bool CanPackBf16(const at::Tensor& w);
// The packed layout of `w`: a bf16 tensor [N rounded up to 16, K] whose elements only
// CpuLinearPackedBf16 can read.
at::Tensor PackBf16(const at::Tensor& w);
// The packed matrix's first `n` rows back in row order (for tests and checks).
at::Tensor UnpackBf16(const at::Tensor& packed, int64_t n);
// Which kernel runs a packed product. kAuto: AMX tiles (cpu_linear_amx.h) where
// AmxBf16Usable() holds, K is a multiple of 32 and x has kAmxMinRows rows or more;
// AVX512-BF16 otherwise. The others force one (tests, benchmarks).
enum class PackedKernel { kAuto, kAvx512Bf16, kAmx };
// Whether this process can run the AMX kernel (the CPU has AMX-BF16, Linux grants the
// tile data; KVPOOL_CPU_AMX=off says no).
bool CpuHasAmxBf16();
// Fewer rows than this go to AVX512-BF16 even where AMX is usable: both are bound by
// reading the weights there, and the vector kernel needs no tile setup.
inline constexpr int64_t kAmxMinRows = 4;
// What the product does with its sums before they leave the registers
// (cpu_linear_epilogue.h): GPT-2's tanh GELU, then, with `residual` defined (a
// contiguous fp32 [M, n]), an in-place add into it, which is then the result.
struct PackedEpilogue {
  bool gelu_tanh = false;
  at::Tensor residual;
};
// y [M, n] fp32 = x [M, K] (fp32, rounded to bf16) * W^T + b, W [n, K] packed by
// PackBf16, b [n] or undefined, then the epilogue. Needs AVX512-BF16
// (CpuPacksBf16Weights()); kAmx needs CpuHasAmxBf16() and K a multiple of 32.
at::Tensor CpuLinearPackedBf16(const at::Tensor& x, const at::Tensor& packed, int64_t n,
                               const at::Tensor& b, PackedKernel kernel = PackedKernel::kAuto,
                               const PackedEpilogue& epilogue = {});

}  // namespace kvpool
