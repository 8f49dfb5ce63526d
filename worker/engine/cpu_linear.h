// The CPU's linear layers: y = x W^T + b in float32, shaped for decode, and the BLAS
// that does the rest. A decode step multiplies a handful of rows (one per running
// sequence) by every weight matrix. OpenBLAS's sgemm packs the whole weight matrix on
// every call, which at 2-8 rows costs 3-4x the time of reading the weights once (gpt2
// on 2 cores: 36 ms at 2 rows against 8 ms for one row through sgemv). CpuLinear
// streams each weight row once for every 4 rows of x (AVX-512; 4 with AVX2 too), with
// FMA chains in registers and the weights prefetched ahead, in L2-sized chunks of
// weight rows, up to kCpuLinearMaxRows rows (which covers prefill of typical prompts);
// more rows go through sgemm, and one row through sgemv where only AVX2 is there.
// KVPOOL_CPU_LINEAR=blas sends every shape to BLAS, =avx2 caps the kernel at AVX2
// (for comparisons).
//
// Weights may be bf16 (--weight-dtype bf16), read at half the bytes. Up to
// kBf16KernelMaxRows rows (decode steps): on AVX-512 CPUs with AVX512-BF16 the kernel
// rounds x to bf16 and runs the bf16 dot products (vdpbf16ps, fp32 sums, as vLLM's
// bf16 does); elsewhere it widens each weight to fp32 as it loads it (exact: a 16-bit
// shift) against fp32 x. More rows (a prefill, compute-bound): ATen's bf16 product
// (oneDNN on the bf16 dot products, x and the result rounded to bf16) where the CPU
// has AVX512-BF16, the fp32 product of the widened weights where it does not.
// KVPOOL_CPU_LINEAR=blas sends bf16 to ATen for every shape; KVPOOL_CPU_BF16=convert
// acts as a CPU without AVX512-BF16 (the portable paths, for tests). Where the CPU has
// AVX512-BF16 the CPU model packs its bf16 matrices at load and every product of them
// goes through cpu_linear_packed.h's kernel instead (faster at every row count).
//
// Weights may be fp16 (--weight-dtype fp16): half the bytes as bf16 reads, with 3 more
// bits of mantissa (a checkpoint stored in fp16, as most Llama ones are, loads
// unrounded). On AVX-512 CPUs the CPU model packs them at load and every product goes
// through cpu_linear_packed_fp16.h's kernel. Elsewhere this kernel widens each weight
// vector to fp32 as it loads it (F16C's vcvtph2ps, exact) against fp32 x, up to
// kCpuLinearMaxRows rows; more rows, or KVPOOL_CPU_LINEAR=blas, take ATen's fp32
// product of the widened matrix.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

#include "common/status.h"

namespace kvpool {

// Up to this many rows the register-blocked kernel is at least as fast as Debian's
// OpenBLAS sgemm (gpt2's shapes, 2 cores of an AVX-512 CPU, where OpenBLAS 0.3.21
// runs its AVX2 kernels: a whole forward 1.2x faster at 200 rows, 1.06x at 512).
inline constexpr int64_t kCpuLinearMaxRows = 512;
// With bf16 weights the kernel (fp32 FMAs) stops where ATen's bf16 product gets faster.
inline constexpr int64_t kBf16KernelMaxRows = 16;

// x [M, K] (rows may be strided, elements contiguous), w [N, K] (float32, bfloat16 or half),
// b [N] or undefined; y is float32. Any device works; the own kernel runs for CPU
// tensors on CPUs with AVX2 and FMA, everything else goes through ATen.
at::Tensor CpuLinear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b);

// Whether CpuLinear uses its own kernel for `rows` rows of weights in `weight_dtype` in
// this process. One row of fp32 weights goes to sgemv where only AVX2 is there; one row
// of bf16 or fp16 weights never does (the matrix would be widened first, every call).
bool CpuLinearUsesKernel(int64_t rows, at::ScalarType weight_dtype = at::kFloat);
// "AVX-512", "AVX2+FMA" or "none (BLAS only)".
const char* CpuLinearKernelName();
// With bf16 weights, whether a product of `rows` rows keeps x in fp32 (else x is
// rounded to bf16 first).
bool CpuLinearBf16KeepsFp32Activations(int64_t rows);

// Whether fp16 matrices are packed for the AVX-512 product at load
// (cpu_linear_packed_fp16.h): on AVX-512 CPUs, unless KVPOOL_CPU_LINEAR asks for another
// path.
bool CpuPacksFp16Weights();

// Whether bf16 matrices are packed for the AVX512-BF16 product at load
// (cpu_linear_packed.h): on CPUs with AVX512-BF16, unless KVPOOL_CPU_LINEAR or
// KVPOOL_CPU_BF16 asks for another path.
bool CpuPacksBf16Weights();

// --weight-dtype on the CPU: "fp32", "bf16", "fp16", or "auto": bf16 where the CPU has
// AVX512-BF16 (a prefill then runs on its bf16 dot products too), else fp32.
// INVALID_ARGUMENT for other names; `why` says what was chosen and why.
StatusOr<at::ScalarType> CpuWeightDtype(const std::string& name, std::string* why);

}  // namespace kvpool
