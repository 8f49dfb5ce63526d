// The packed fp16 product (cpu_linear_packed_fp16.h) against the float64 product of the
// same fp16 values and fp32 x, over row counts on both sides of its 8-row tiles, column
// counts that leave 1 or 2 blocks past its 3-block chunks or end inside a block (the
// padding), K of 1, odd and gpt2's 768, strided rows of x, with and without bias, and
// with the fused GELU and residual add; the layout round-trips exactly, and what it
// cannot take is refused. Skips where the CPU has no AVX-512 (or KVPOOL_CPU_LINEAR
// chooses another path).
#include "engine/cpu_linear_packed_fp16.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "engine/cpu_linear.h"

namespace kvpool {
namespace {

TEST(CpuLinearPackedFp16Test, LayoutRoundTripsAndRefusesOtherShapes) {
  for (const int64_t n : {1, 16, 37, 50}) {
    for (const int64_t k : {1, 3, 64}) {
      const at::Tensor w = at::randn({n, k}).to(at::kHalf);
      ASSERT_TRUE(CanPackFp16(w));
      const at::Tensor packed = PackFp16(w);
      EXPECT_EQ(packed.size(0), (n + 15) / 16 * 16);
      EXPECT_EQ(packed.size(1), k);
      if (n >= 16 && k > 1) {
        EXPECT_FALSE(packed.narrow(0, 0, n).equal(w)) << "the layout reorders the elements";
      }
      EXPECT_TRUE(UnpackFp16(packed, n).equal(w)) << n << " x " << k;
    }
  }
  EXPECT_FALSE(CanPackFp16(at::zeros({32, 64}, at::kBFloat16)));
  EXPECT_FALSE(CanPackFp16(at::zeros({64, 32}, at::kHalf).t()));  // not contiguous
  EXPECT_THROW(CpuLinearPackedFp16(at::randn({2, 63}), PackFp16(at::zeros({16, 64}, at::kHalf)), 16,
                                   at::Tensor()),
               c10::Error);  // K differs
}

// y's error against the float64 product of the same values: the fp32 sums' rounding
// (relative to sum |x| |w|), then a few ulp of the GELU and of the add.
void ExpectWithinFp32Rounding(const at::Tensor& y, const at::Tensor& x, const at::Tensor& w,
                              const at::Tensor& b, bool gelu, const at::Tensor& before) {
  const at::Tensor xd = x.to(at::kDouble), wd = w.to(at::kDouble);
  at::Tensor expected = at::matmul(xd, wd.t());
  at::Tensor magnitude = at::matmul(xd.abs(), wd.abs().t());
  if (b.defined()) {
    expected += b.to(at::kDouble);
    magnitude += b.to(at::kDouble).abs();
  }
  if (gelu) {
    expected = 0.5 * expected *
               (1 + at::tanh(std::sqrt(2.0 / M_PI) * (expected + 0.044715 * expected.pow(3))));
  }
  if (before.defined()) expected += before.to(at::kDouble);
  const int64_t k = x.size(1);
  const at::Tensor bound = 1.13 * (k + 1) * std::ldexp(1.0, -23) * magnitude +
                           8 * std::ldexp(1.0, -24) * expected.abs() + 1e-7;
  const at::Tensor error = (y.to(at::kDouble) - expected).abs();
  EXPECT_TRUE((error <= bound).all().item<bool>())
      << "worst excess " << (error - bound).max().item<double>();
}

TEST(CpuLinearPackedFp16Test, MatchesTheProductOfTheFp16Values) {
  if (!CpuPacksFp16Weights()) GTEST_SKIP() << "no AVX-512 packed fp16 product on this CPU";
  for (const int64_t rows : {1, 2, 7, 8, 9, 17, 130}) {
    for (const int64_t n : {1, 16, 37, 48, 64, 80, 300}) {
      for (const int64_t k : {1, 67, 768}) {
        for (const bool with_bias : {false, true}) {
          SCOPED_TRACE(testing::Message()
                       << rows << " rows, n " << n << ", k " << k << (with_bias ? ", bias" : ""));
          at::manual_seed(rows * 1000 + n * 10 + k);
          const at::Tensor x = at::randn({rows, k + 3}).narrow(1, 1, k);  // rows k + 3 apart
          const at::Tensor w = at::randn({n, k}).to(at::kHalf);
          const at::Tensor b = with_bias ? at::randn({n}) : at::Tensor();
          const at::Tensor y = CpuLinearPackedFp16(x, PackFp16(w), n, b);
          ASSERT_EQ(y.sizes(), (at::IntArrayRef{rows, n}));
          ASSERT_EQ(y.scalar_type(), at::kFloat);
          ExpectWithinFp32Rounding(y, x, w, b, false, at::Tensor());
        }
      }
    }
  }
}

TEST(CpuLinearPackedFp16Test, GeluAndResidualEpiloguesMatchTheFormula) {
  if (!CpuPacksFp16Weights()) GTEST_SKIP() << "no AVX-512 packed fp16 product on this CPU";
  for (const int64_t rows : {1, 7, 33}) {
    for (const int64_t n : {37, 768}) {
      for (const bool gelu : {false, true}) {
        for (const bool add : {false, true}) {
          SCOPED_TRACE(testing::Message() << rows << " rows, n " << n << (gelu ? ", GELU" : "")
                                          << (add ? ", residual" : ""));
          const int64_t k = 768;
          at::manual_seed(rows * 100 + n);
          const at::Tensor x = at::randn({rows, k}) * 0.1;  // sums of a few units
          const at::Tensor w = at::randn({n, k}).to(at::kHalf);
          const at::Tensor b = at::randn({n});
          const at::Tensor residual = at::randn({rows, n});
          const at::Tensor before = residual.clone();
          const at::Tensor y =
              CpuLinearPackedFp16(x, PackFp16(w), n, b, {gelu, add ? residual : at::Tensor()});
          if (add) {
            EXPECT_EQ(y.data_ptr(), residual.data_ptr()) << "the residual is the result";
          }
          ExpectWithinFp32Rounding(y, x, w, b, gelu, add ? before : at::Tensor());
        }
      }
    }
  }
}

}  // namespace
}  // namespace kvpool
