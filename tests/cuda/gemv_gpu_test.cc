// The decode GEMV against a float64 reference over the same rounded inputs, for every
// dtype, row counts 1..8 and each epilogue (bias, GELU, residual); plus its argument
// checks. Skips without a CUDA device (except the argument checks).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>

#include "cuda/gemv.h"
#include "gpu_test_util.h"

namespace kvpool::gpu {
namespace {

using testing::Compare;
using testing::HostTensor;

struct Case {
  KvDtype dtype;
  int32_t m, n, k;
  bool bias, gelu, residual;
};

class GemvTest : public ::testing::TestWithParam<Case> {};

TEST_P(GemvTest, MatchesFloat64Reference) {
  KVPOOL_SKIP_WITHOUT_GPU();
  const Case c = GetParam();
  std::mt19937_64 rng(c.m * 1000 + c.n + c.k);
  HostTensor w(c.dtype, size_t(c.n) * c.k), x(c.dtype, size_t(c.m) * c.k), b(c.dtype, c.n),
      res(c.dtype, size_t(c.m) * c.n), y(c.dtype, size_t(c.m) * c.n);
  w.FillUniform(rng, -0.1f, 0.1f);
  x.FillUniform(rng, -1.f, 1.f);
  b.FillUniform(rng, -0.5f, 0.5f);
  res.FillUniform(rng, -1.f, 1.f);
  std::vector<void*> dev;
  auto upload = [&](HostTensor& h) {
    void* d = nullptr;
    EXPECT_EQ(cudaMalloc(&d, h.byte_size()), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(d, h.bytes(), h.byte_size(), cudaMemcpyHostToDevice), cudaSuccess);
    dev.push_back(d);
    return d;
  };
  GemvParams p;
  p.dtype = c.dtype;
  p.w = upload(w);
  p.x = upload(x);
  p.bias = c.bias ? upload(b) : nullptr;
  p.residual = c.residual ? upload(res) : nullptr;
  p.y = upload(y);
  ASSERT_EQ(cudaMemset(p.y, 0xFF, y.byte_size()), cudaSuccess);  // poison: NaN everywhere
  p.m = c.m;
  p.n = c.n;
  p.k = c.k;
  p.gelu_tanh = c.gelu;
  Status st = Gemv(p, nullptr);
  ASSERT_TRUE(st.ok()) << st.message();
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(y.bytes(), p.y, y.byte_size(), cudaMemcpyDeviceToHost), cudaSuccess);
  y.DecodeBytes();
  std::vector<double> ref(size_t(c.m) * c.n);
  for (int32_t r = 0; r < c.m; ++r) {
    for (int32_t i = 0; i < c.n; ++i) {
      double v = 0;
      for (int32_t j = 0; j < c.k; ++j)
        v += double(w.value(size_t(i) * c.k + j)) * x.value(size_t(r) * c.k + j);
      if (c.bias) v += b.value(i);
      if (c.gelu) v = 0.5 * v * (1 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
      if (c.residual) v += res.value(size_t(r) * c.n + i);
      ref[size_t(r) * c.n + i] = v;
    }
  }
  auto cmp = Compare(y.values(), ref, [&](size_t i) {
    return "row " + std::to_string(i / c.n) + " col " + std::to_string(i % c.n);
  });
  EXPECT_TRUE(cmp.all_finite) << cmp.report;
  EXPECT_LE(cmp.rel_error, testing::ToleranceFor(c.dtype)) << cmp.report;
  for (void* d : dev) cudaFree(d);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, GemvTest,
    ::testing::Values(Case{KvDtype::kFloat16, 1, 2304, 768, true, false, false},
                      Case{KvDtype::kFloat16, 1, 768, 3072, true, false, true},
                      Case{KvDtype::kFloat16, 3, 3072, 768, true, true, false},
                      Case{KvDtype::kFloat16, 8, 1001, 768, false, false, false},
                      Case{KvDtype::kBFloat16, 1, 2304, 768, true, true, true},
                      Case{KvDtype::kBFloat16, 5, 777, 1024, false, false, true},
                      Case{KvDtype::kFloat32, 1, 2304, 768, true, false, true},
                      Case{KvDtype::kFloat32, 4, 1000, 772, true, true, false},
                      Case{KvDtype::kFloat32, 7, 50, 64, false, false, false}),
    [](const ::testing::TestParamInfo<Case>& info) {
      const Case& c = info.param;
      return std::string(KvDtypeName(c.dtype)) + "_m" + std::to_string(c.m) + "_n" +
             std::to_string(c.n) + "_k" + std::to_string(c.k) + (c.bias ? "_bias" : "") +
             (c.gelu ? "_gelu" : "") + (c.residual ? "_residual" : "");
    });

TEST(GemvArgsTest, RejectsWhatItCannotDo) {
  alignas(16) static float buf[64];
  GemvParams p;
  p.dtype = KvDtype::kFloat16;
  p.w = p.x = buf;
  p.y = buf;
  p.n = 4;
  p.k = 12;  // not a multiple of 8 halves
  p.m = 1;
  EXPECT_NE(Gemv(p, nullptr).message().find("multiple of 8"), std::string::npos);
  p.k = 16;
  p.m = 9;
  EXPECT_NE(Gemv(p, nullptr).message().find("m must be in [1, 8]"), std::string::npos);
  p.m = 1;
  p.residual = p.y;
  EXPECT_NE(Gemv(p, nullptr).message().find("alias"), std::string::npos);
}

}  // namespace
}  // namespace kvpool::gpu
