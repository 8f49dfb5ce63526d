// The packed bf16 product (cpu_linear_packed.h) against the float64 product of the
// same bf16 values (x rounded to bf16 as the kernel does), over row counts on both
// sides of its 8-row tiles, column counts that leave 1 or 2 blocks past its 3-block
// chunks or end inside a block (the padding), the smallest K and one past a vector's
// worth, with and without bias; the layout round-trips exactly, and shapes it cannot
// take are refused; a large one lies in memory advised for huge pages. Both kernels: AVX512-BF16,
// and AMX where the CPU has it. Skips where the CPU has no AVX512-BF16 (or KVPOOL_CPU_LINEAR /
// KVPOOL_CPU_BF16 choose another path).
#include "engine/cpu_linear_packed.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/cpu_linear.h"
#include "engine/cpu_linear_epilogue.h"

namespace kvpool {
namespace {

// The VmFlags line of the mapping that starts at `address` ("" where none does).
std::string MappingFlags(uintptr_t address) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    const size_t dash = line.find('-');
    if (dash != std::string::npos && dash > 0 && line.find(' ') > dash &&
        std::isxdigit(static_cast<unsigned char>(line[0]))) {
      inside = std::stoull(line.substr(0, dash), nullptr, 16) == address;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      return line;
    }
  }
  return "";
}

TEST(CpuLinearPackedTest, LayoutRoundTripsAndRefusesOtherShapes) {
  for (const auto& [n, k] :
       {std::pair<int64_t, int64_t>{16, 4}, {48, 64}, {80, 770}, {37, 66}, {1, 2}}) {
    const at::Tensor w = at::randn({n, k}).to(at::kBFloat16);
    ASSERT_TRUE(CanPackBf16(w));
    const at::Tensor packed = PackBf16(w);
    EXPECT_EQ(packed.size(0), (n + 15) / 16 * 16);
    EXPECT_EQ(packed.size(1), k);
    if (n % 16 == 0) {
      EXPECT_FALSE(packed.equal(w)) << "the layout reorders the elements";
    }
    EXPECT_TRUE(UnpackBf16(packed, n).equal(w)) << n << " x " << k;
  }
  EXPECT_FALSE(CanPackBf16(at::zeros({32, 63}, at::kBFloat16)));  // K odd
  EXPECT_FALSE(CanPackBf16(at::zeros({32, 64}, at::kFloat)));
  EXPECT_FALSE(CanPackBf16(at::zeros({64, 32}, at::kBFloat16).t()));  // not contiguous
}

// A packed matrix of 2 MiB or more lies in fresh 2 MiB-aligned memory advised for
// transparent huge pages ("hg" among its mapping's VmFlags), with its padding rows zero,
// and the mapping goes when the tensor does. Any CPU: packing is only a layout.
TEST(CpuLinearPackedTest, LargeMatricesLieInMemoryAdvisedForHugePages) {
  const int64_t n = 1250, k = 1024;  // 2.5 MiB, padded to 1264 rows
  const at::Tensor w = at::randn({n, k}).to(at::kBFloat16);
  at::Tensor packed = PackBf16(w);
  const auto address = reinterpret_cast<uintptr_t>(packed.data_ptr());
  EXPECT_EQ(address % (uintptr_t{2} << 20), 0u);
  EXPECT_TRUE(UnpackBf16(packed, n).equal(w));
  EXPECT_TRUE(
      UnpackBf16(packed, packed.size(0)).narrow(0, n, packed.size(0) - n).eq(0).all().item<bool>());
  const std::string flags = MappingFlags(address);
  ASSERT_FALSE(flags.empty()) << "no mapping starts at the packed matrix";
  if (std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled").good()) {
    EXPECT_NE(flags.find(" hg"), std::string::npos) << flags;  // else a kernel without THP
  }
  packed = at::Tensor();
  EXPECT_TRUE(MappingFlags(address).empty()) << "the mapping outlived its tensor";
}

// An arena holds matrices one after another, each on a 4 KiB boundary, in one mapping
// that starts on a 2 MiB boundary and is advised for huge pages though each matrix is
// under 2 MiB; the padding rows are zero, and the mapping goes with the last matrix,
// not with the arena. Past its room it refuses. Any CPU: packing is only a layout.
TEST(CpuLinearPackedTest, AnArenaHoldsMatricesOneAfterAnotherInOneHugePageMapping) {
  const int64_t n = 600, k = 1026;  // 608 x 1026 x 2 bytes: 1.19 MiB, 305 pages rounded up
  const size_t footprint = PackedArena::Footprint(n, k);
  EXPECT_EQ(footprint, size_t{305} * 4096);
  auto arena = std::make_unique<PackedArena>(3 * footprint);
  std::vector<at::Tensor> w, packed;
  for (int i = 0; i < 3; ++i) {
    w.push_back(at::randn({n, k}).to(at::kBFloat16));
    packed.push_back(PackBf16(w.back(), arena.get()));
  }
  EXPECT_THROW(PackBf16(w[0], arena.get()), std::logic_error);
  const auto address = reinterpret_cast<uintptr_t>(packed[0].data_ptr());
  EXPECT_EQ(address % (uintptr_t{2} << 20), 0u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(packed[i].data_ptr()), address + i * footprint);
    EXPECT_TRUE(UnpackBf16(packed[i], n).equal(w[i]));
    EXPECT_TRUE(UnpackBf16(packed[i], 608).narrow(0, n, 8).eq(0).all().item<bool>());
  }
  const std::string flags = MappingFlags(address);
  ASSERT_FALSE(flags.empty()) << "no mapping starts at the first matrix";
  if (std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled").good()) {
    EXPECT_NE(flags.find(" hg"), std::string::npos) << flags;
  }
  arena.reset();
  packed[0] = at::Tensor();
  packed[2] = at::Tensor();
  EXPECT_FALSE(MappingFlags(address).empty()) << "the mapping went before its last matrix";
  EXPECT_TRUE(UnpackBf16(packed[1], n).equal(w[1]));
  packed[1] = at::Tensor();
  EXPECT_TRUE(MappingFlags(address).empty()) << "the mapping outlived its matrices";
  // Under 2 MiB of room: the heap's memory, still one piece after another's room.
  PackedArena small(footprint);
  EXPECT_TRUE(UnpackBf16(PackBf16(w[0], &small), n).equal(w[0]));
  EXPECT_THROW(PackBf16(w[0], &small), std::logic_error);
}

// Every shape in one test (one process: a ctest entry per shape would cost more in
// start-up than the products).
// Each kernel the CPU has, chosen explicitly (kAuto picks one of them by shape).
void ExpectTheProductOfTheBf16Values(PackedKernel kernel, std::initializer_list<int64_t> ks) {
  for (const int64_t rows : {1, 2, 5, 7, 8, 9, 16, 17, 31, 33, 130}) {
    for (const int64_t n : {1, 16, 37, 48, 64, 80, 300, 768}) {
      for (const int64_t k : ks) {
        for (const bool with_bias : {false, true}) {
          SCOPED_TRACE(testing::Message()
                       << rows << " rows, n " << n << ", k " << k << (with_bias ? ", bias" : "")
                       << (kernel == PackedKernel::kAmx ? ", AMX" : ", AVX512-BF16"));
          at::manual_seed(rows * 1000 + n + k);
          const at::Tensor x = at::randn({rows, k + 3}).narrow(1, 1, k);  // strided rows
          const at::Tensor w = at::randn({n, k}).to(at::kBFloat16);
          const at::Tensor b = with_bias ? at::randn({n}) : at::Tensor();
          const at::Tensor y = CpuLinearPackedBf16(x, PackBf16(w), n, b, kernel);
          ASSERT_EQ(y.sizes(), (at::IntArrayRef{rows, n}));
          ASSERT_EQ(y.scalar_type(), at::kFloat);
          const at::Tensor xd = x.to(at::kBFloat16).to(at::kDouble), wd = w.to(at::kDouble);
          at::Tensor expected = at::matmul(xd, wd.t());
          if (with_bias) expected += b.to(at::kDouble);
          // Only the fp32 sums round: k terms, each within 2^-24 of sum |x| |w| (+ bias).
          at::Tensor magnitude = at::matmul(xd.abs(), wd.abs().t());
          if (with_bias) magnitude += b.to(at::kDouble).abs();
          const at::Tensor bound =
              static_cast<double>(k + 1) * std::ldexp(1.0, -23) * magnitude + 1e-30;
          const at::Tensor error = (y.to(at::kDouble) - expected).abs();
          EXPECT_TRUE((error <= bound).all().item<bool>())
              << "worst excess " << (error - bound).max().item<double>();
        }
      }
    }
  }
}

TEST(CpuLinearPackedTest, MatchesTheProductOfTheBf16Values) {
  if (!CpuPacksBf16Weights()) GTEST_SKIP() << "no AVX512-BF16 packed product on this CPU";
  ExpectTheProductOfTheBf16Values(PackedKernel::kAvx512Bf16, {2, 34, 768});
}

// The AMX kernel over the same rows and columns: tails of its 16-row tiles and 32-row
// groups, an odd count of column blocks, K of one step and of 24.
TEST(CpuLinearPackedTest, AmxMatchesTheProductOfTheBf16Values) {
  if (!CpuPacksBf16Weights() || !CpuHasAmxBf16()) {
    GTEST_SKIP() << "no AMX-BF16 on this CPU (or KVPOOL_CPU_AMX=off)";
  }
  ExpectTheProductOfTheBf16Values(PackedKernel::kAmx, {32, 768});
  EXPECT_THROW(
      CpuLinearPackedBf16(at::randn({4, 34}), PackBf16(at::randn({16, 34}).to(at::kBFloat16)), 16,
                          {}, PackedKernel::kAmx),
      c10::Error)
      << "K must be a multiple of 32";
}

__attribute__((target("avx512f"))) void GeluOf16(const float* x, float* y) {
  _mm512_storeu_ps(y, packed::GeluTanh(_mm512_loadu_ps(x)));
}

// The epilogue's GELU against the float64 formula, point by point: within a few ulp of
// the value (its exp polynomial and division), over [-12, 12], where it turns to 0 and
// to x, and at large and tiny inputs.
TEST(CpuLinearPackedTest, EpilogueGeluIsTheTanhFormulaToAFewUlp) {
  if (__builtin_cpu_supports("avx512f") == 0) GTEST_SKIP() << "no AVX-512";
  std::vector<float> xs{0.f, -0.f, 1e-30f, -1e-30f, 1e-7f, -1e-7f, 100.f, -100.f, 1e30f, -1e30f};
  for (int i = -12000; i <= 12000; ++i) xs.push_back(static_cast<float>(i) * 1e-3f);
  while (xs.size() % 16 != 0) xs.push_back(0.5f);
  std::vector<float> ys(xs.size());
  for (size_t i = 0; i < xs.size(); i += 16) GeluOf16(xs.data() + i, ys.data() + i);
  for (size_t i = 0; i < xs.size(); ++i) {
    const double x = xs[i];
    // 0.5 x (1 + tanh(u)) written as x / (1 + e^(-2u)): the same number, without the
    // cancellation that rounds it to 0 in float64 below x = -9.
    const double u = std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x);
    const double want = x / (1 + std::exp(-2 * u));
    // A few ulp, times e^(-2u)'s conditioning where u's own rounding is amplified (x
    // below -3, where the value is under 0.01).
    const double ulps = 4 + 8 * std::abs(u);
    ASSERT_NEAR(ys[i], want, ulps * std::ldexp(std::abs(want), -24) + 1e-37) << "x = " << x;
  }
}

// The fused end of a product, on each kernel the CPU has: GPT-2's tanh GELU against
// the float64 formula of the float64 product, and the in-place residual add, whose
// result is the residual tensor itself.
TEST(CpuLinearPackedTest, GeluAndResidualEpiloguesMatchTheFormula) {
  if (!CpuPacksBf16Weights()) GTEST_SKIP() << "no AVX512-BF16 packed product on this CPU";
  std::vector<PackedKernel> kernels{PackedKernel::kAvx512Bf16};
  if (CpuHasAmxBf16()) kernels.push_back(PackedKernel::kAmx);
  for (const PackedKernel kernel : kernels) {
    for (const int64_t rows : {1, 7, 33}) {
      for (const int64_t n : {37, 768}) {
        for (const bool gelu : {false, true}) {
          for (const bool add : {false, true}) {
            SCOPED_TRACE(testing::Message()
                         << rows << " rows, n " << n << (gelu ? ", GELU" : "")
                         << (add ? ", residual" : "")
                         << (kernel == PackedKernel::kAmx ? ", AMX" : ", AVX512-BF16"));
            const int64_t k = 768;
            at::manual_seed(rows * 100 + n);
            const at::Tensor x = at::randn({rows, k}) * 0.1;  // sums of a few units
            const at::Tensor w = at::randn({n, k}).to(at::kBFloat16);
            const at::Tensor b = at::randn({n});
            const at::Tensor residual = at::randn({rows, n});
            const at::Tensor before = residual.clone();
            PackedEpilogue e{gelu, add ? residual : at::Tensor()};
            const at::Tensor y = CpuLinearPackedBf16(x, PackBf16(w), n, b, kernel, e);
            if (add) {
              EXPECT_EQ(y.data_ptr(), residual.data_ptr()) << "the residual is the result";
            }
            const at::Tensor xd = x.to(at::kBFloat16).to(at::kDouble), wd = w.to(at::kDouble);
            at::Tensor expected = at::matmul(xd, wd.t()) + b.to(at::kDouble);
            if (gelu) {
              expected =
                  0.5 * expected *
                  (1 + at::tanh(std::sqrt(2.0 / M_PI) * (expected + 0.044715 * expected.pow(3))));
            }
            if (add) expected += before.to(at::kDouble);
            // The sums' fp32 rounding (GELU's slope stays under 1.13), then a few ulp of
            // the GELU and of the add.
            const at::Tensor magnitude =
                at::matmul(xd.abs(), wd.abs().t()) + b.to(at::kDouble).abs();
            const at::Tensor bound = 1.13 * (k + 1) * std::ldexp(1.0, -23) * magnitude +
                                     8 * std::ldexp(1.0, -24) * expected.abs() + 1e-7;
            const at::Tensor error = (y.to(at::kDouble) - expected).abs();
            EXPECT_TRUE((error <= bound).all().item<bool>())
                << "worst excess " << (error - bound).max().item<double>();
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace kvpool
