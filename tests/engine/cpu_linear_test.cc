// The decode-shaped CPU linear against a naive double-precision product, over row
// counts on both sides of the kernel's range, odd output sizes, input sizes that
// leave a scalar tail, strided rows of x, with and without bias; with fp32 weights and
// with bf16 and fp16 weights (against the product of the 16-bit values themselves).
#include "engine/cpu_linear.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <tuple>

namespace kvpool {
namespace {

class CpuLinearTest : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t, bool>> {
};

// Random operands for one shape (x a column slice of a wider tensor, so that its rows
// are k + 5 floats apart), CpuLinear's result and the float64 product of the same
// values.
struct Product {
  at::Tensor x, w, b, y, expected;
};
Product RunProduct(int64_t rows, int64_t n, int64_t k, bool with_bias,
                   at::ScalarType weight_dtype) {
  at::manual_seed(rows * 1000 + n + k + (weight_dtype == at::kFloat ? 0 : 7));
  Product p;
  p.x = at::randn({rows, k + 5}).narrow(1, 2, k);
  p.w = at::randn({n, k}).to(weight_dtype);
  p.b = with_bias ? at::randn({n}) : at::Tensor();
  p.y = CpuLinear(p.x, p.w, p.b);
  p.expected = at::matmul(p.x.to(at::kDouble), p.w.to(at::kDouble).t());
  if (with_bias) p.expected += p.b.to(at::kDouble);
  return p;
}

TEST_P(CpuLinearTest, MatchesDoublePrecisionProduct) {
  const auto [rows, n, k, with_bias] = GetParam();
  const auto [x, w, b, y, expected] = RunProduct(rows, n, k, with_bias, at::kFloat);
  ASSERT_EQ(y.sizes(), expected.sizes());
  ASSERT_EQ(y.scalar_type(), at::kFloat);
  const double max_error = (y.to(at::kDouble) - expected).abs().max().item<double>();
  EXPECT_LT(max_error, 1e-3 * std::sqrt(static_cast<double>(k)))
      << rows << " rows, n " << n << ", k " << k
      << (CpuLinearUsesKernel(rows) ? ", kernel" : ", BLAS");
}

TEST_P(CpuLinearTest, Bf16WeightsMatchTheProductOfTheirValues) {
  const auto [rows, n, k, with_bias] = GetParam();
  const auto [x, w, b, y, expected] = RunProduct(rows, n, k, with_bias, at::kBFloat16);
  ASSERT_EQ(y.sizes(), expected.sizes());
  ASSERT_EQ(y.scalar_type(), at::kFloat);
  // Widened weights against fp32 x (and fp32 sums) are exact to fp32 rounding; the bf16
  // dot products round x (and ATen's bf16 product the result too) to bf16 (8
  // significant bits: relative 2^-9 each), so their bound is relative to sum |x| |w|.
  const bool kernel = CpuLinearBf16KeepsFp32Activations(rows);
  const at::Tensor error = (y.to(at::kDouble) - expected).abs();
  const at::Tensor bound = kernel ? at::full_like(error, 1e-3 * std::sqrt(static_cast<double>(k)))
                                  : std::ldexp(1.0, -7) * (at::matmul(x.to(at::kDouble).abs(),
                                                                      w.to(at::kDouble).abs().t()) +
                                                           expected.abs()) +
                                        1e-6;
  EXPECT_TRUE((error <= bound).all().item<bool>())
      << rows << " rows, n " << n << ", k " << k << (kernel ? ", fp32 x" : ", bf16 x")
      << ": worst excess " << (error - bound).max().item<double>();
}

TEST_P(CpuLinearTest, Fp16WeightsMatchTheProductOfTheirValues) {
  const auto [rows, n, k, with_bias] = GetParam();
  const auto [x, w, b, y, expected] = RunProduct(rows, n, k, with_bias, at::kHalf);
  ASSERT_EQ(y.sizes(), expected.sizes());
  ASSERT_EQ(y.scalar_type(), at::kFloat);
  // Every path widens the fp16 weights exactly and keeps x and the sums in fp32, so the
  // bound is fp32 rounding's, as for fp32 weights.
  const double max_error = (y.to(at::kDouble) - expected).abs().max().item<double>();
  EXPECT_LT(max_error, 1e-3 * std::sqrt(static_cast<double>(k)))
      << rows << " rows, n " << n << ", k " << k
      << (CpuLinearUsesKernel(rows, at::kHalf) ? ", kernel" : ", ATen");
}

INSTANTIATE_TEST_SUITE_P(Shapes, CpuLinearTest,
                         ::testing::Combine(::testing::Values<int64_t>(1, 2, 3, 4, 5, 6, 7, 8, 9,
                                                                       11, 12, 13, 16, 17, 25, 33,
                                                                       130, 513),
                                            ::testing::Values<int64_t>(1, 37, 300),
                                            ::testing::Values<int64_t>(8, 67, 768),
                                            ::testing::Bool()));

TEST(CpuLinearRangeTest, KernelCoversDecodeBatchesOnly) {
  // One row: the AVX-512 kernel, or sgemv (as fast as the AVX2 kernel there).
  EXPECT_EQ(CpuLinearUsesKernel(1), std::string(CpuLinearKernelName()) == "AVX-512");
  EXPECT_FALSE(CpuLinearUsesKernel(0));
  EXPECT_FALSE(CpuLinearUsesKernel(kCpuLinearMaxRows + 1));
  if (std::string(CpuLinearKernelName()) != "none (BLAS only)") {  // not KVPOOL_CPU_LINEAR=blas
    EXPECT_TRUE(CpuLinearUsesKernel(2));
    EXPECT_TRUE(CpuLinearUsesKernel(kCpuLinearMaxRows));
    // One row of 16-bit weights too, on either ISA: ATen would widen the whole matrix on
    // every call of a batch-1 decode step.
    EXPECT_TRUE(CpuLinearUsesKernel(1, at::kHalf));
    EXPECT_TRUE(CpuLinearUsesKernel(1, at::kBFloat16));
  }
}

TEST(CpuWeightDtypeTest, AutoPicksTheFastestWeightsThisCpuRunsAndSaysWhy) {
  // bf16 where the CPU has bf16 dot products; fp16 where it has AVX-512 without them
  // (the packed fp16 kernel: half fp32's bytes at fp32's arithmetic); fp32 otherwise.
  // The ctest variants cover the second branch (KVPOOL_CPU_BF16=convert) and the third
  // (KVPOOL_CPU_LINEAR=avx2/blas with it) on this project's AVX-512 machines.
  const char* bf16_env = std::getenv("KVPOOL_CPU_BF16");
  const bool native_bf16 = __builtin_cpu_supports("avx512bf16") != 0 &&
                           (bf16_env == nullptr || std::string(bf16_env) != "convert");
  std::string why;
  StatusOr<at::ScalarType> dtype = CpuWeightDtype("auto", &why);
  ASSERT_TRUE(dtype.ok());
  if (native_bf16) {
    EXPECT_EQ(*dtype, at::kBFloat16);
    EXPECT_NE(why.find("auto: the CPU has AVX512-BF16"), std::string::npos) << why;
  } else if (CpuPacksFp16Weights()) {
    EXPECT_EQ(*dtype, at::kHalf);
    EXPECT_NE(why.find("AVX-512 but no AVX512-BF16"), std::string::npos) << why;
  } else {
    EXPECT_EQ(*dtype, at::kFloat);
    EXPECT_NE(why.find("neither AVX512-BF16 nor AVX-512"), std::string::npos) << why;
  }
  EXPECT_EQ(CpuWeightDtype("fp8", &why).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvpool
