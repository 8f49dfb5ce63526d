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

#include <cstddef>
#include <memory>

namespace kvpool {

// Memory for a model's packed matrices (bf16 or fp16): one mapping, 2 MiB-aligned and
// advised for transparent huge pages when it holds 2 MiB or more, the matrices one
// after another in it, each starting on a 4 KiB boundary. A product streams its weights
// from memory, and a 4 KiB page is a TLB miss every 64 lines; a mapping per matrix left
// each one's last part short of 2 MiB in 4 KiB pages (gpt2: 19% of its bf16 weights,
// and all of its 1.1 MiB attention projections), where one mapping for all leaves only
// its own end. The mapping goes when the last matrix carved from it does.
class PackedArena {
 public:
  // Room for matrices whose Footprint()s add up to `bytes`.
  explicit PackedArena(size_t bytes);
  // The bytes a packed [n, k] matrix of 16-bit elements takes in an arena: n rounded up
  // to 16 rows, the whole rounded up to 4 KiB.
  static size_t Footprint(int64_t n, int64_t k);
  // The next zeroed [rows, k] piece (rows a multiple of 16), of `options`' 16-bit dtype.
  // Throws std::logic_error past the room the arena was made with.
  at::Tensor Zeroed(int64_t rows, int64_t k, const at::TensorOptions& options);

 private:
  struct Mapping;
  std::shared_ptr<Mapping> mapping_;  // null: the room is under 2 MiB, pieces come from the heap
  size_t size_ = 0, used_ = 0;
};

// Whether `w` is a contiguous 2-D bf16 matrix [N, K] with K even.
bool CanPackBf16(const at::Tensor& w);
// The packed layout of `w`: a bf16 tensor [N rounded up to 16, K] whose elements only
// CpuLinearPackedBf16 can read; in `arena` where given, else in an arena of its own.
at::Tensor PackBf16(const at::Tensor& w, PackedArena* arena = nullptr);
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
