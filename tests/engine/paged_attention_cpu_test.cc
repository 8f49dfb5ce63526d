// The CPU paged kernel against a naive double-precision attention, with shuffled,
// non-consecutive block tables, for every pool dtype. Two references per case: over the
// values as stored (decoded with kv_quant.h: the kernel must read every dtype exactly,
// so the tolerance is fp32's whatever the dtype, except bf16 read with bf16 dot
// products, which rounds q and the softmax weights too) and over the values before they
// were stored (the dtype's own error, with a tolerance stated per dtype below).
#include "engine/paged_attention_cpu.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "engine/kv_quant.h"

namespace kvpool {
namespace {

struct Case {
  int32_t block_size;
  int32_t num_heads;
  int32_t num_kv_heads;
  int32_t head_dim;  // 64 and 128 have AVX-512 kernels; others the portable loop
  KvDtype dtype = KvDtype::kFloat32;
};

// Largest |kernel - float64 attention over the unrounded K/V| allowed per dtype, for
// q, K and V uniform in [-1, 1]. The worst case is the 1-token context, whose output is
// V itself: half a step of the dtype near magnitude 1, measured on these shapes as
// fp16 2.4e-4, bf16 2.0e-3, int8 3.9e-3 (1/254 of the head's max), fp8 3.6e-2 (a step is
// 32/448 near the max).
double StoredErrorBound(KvDtype dtype) {
  switch (dtype) {
    case KvDtype::kFloat32:
      return 1e-5;
    case KvDtype::kFloat16:
      return 3e-4;
    case KvDtype::kBFloat16:
      return 2.5e-3;
    case KvDtype::kInt8:
      return 4.5e-3;
    case KvDtype::kFp8E4m3:
      return 4e-2;
  }
  return 0;
}

class PagedAttentionCpuTest : public ::testing::TestWithParam<Case> {};

// A query of the batch: sequence `seq` (of context_lens), seeing its first `context`
// positions.
struct QuerySpec {
  int32_t seq;
  int32_t context;
};

// Runs the kernel over sequences of `context_lens` positions and the queries `specs`,
// and checks it against the references.
// `rounding_slack` widens the bound on the dtype's own rounding (the comparison with the
// unrounded values) for query sets with more short contexts than the decode case.
void CheckAgainstDoubleAttention(const Case& c, const std::vector<int32_t>& context_lens,
                                 const std::vector<QuerySpec>& specs, double rounding_slack = 1) {
  const int32_t head_dim = c.head_dim;
  std::mt19937 rng(1234 + c.block_size * 100 + c.num_kv_heads);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);

  PoolGeometry g;
  g.num_layers = 1;
  g.num_kv_heads = c.num_kv_heads;
  g.head_dim = head_dim;
  g.block_size = c.block_size;
  g.dtype = c.dtype;
  int64_t total_blocks = 0;
  for (int32_t len : context_lens) total_blocks += (len + c.block_size - 1) / c.block_size;
  g.num_blocks = total_blocks + 5;  // spare blocks that nobody references
  std::vector<char> pool(g.pool_bytes());
  const void* regions[2] = {pool.data() + g.region_byte_offset(0, KvPart::kKey),
                            pool.data() + g.region_byte_offset(0, KvPart::kValue)};
  // The values before storing, [part][block][slot][head][dim], then stored head by head.
  std::vector<float> exact[2];
  for (int part = 0; part < 2; ++part) {
    exact[part].resize(g.num_blocks * g.block_elems());
    for (float& x : exact[part]) x = dist(rng);
    for (int64_t b = 0; b < g.num_blocks; ++b) {
      for (int32_t s = 0; s < g.block_size; ++s) {
        for (int32_t h = 0; h < g.num_kv_heads; ++h) {
          const float* x = exact[part].data() + b * g.block_elems() + s * g.token_elems() +
                           int64_t{h} * head_dim;
          EncodeKvHead(x, head_dim, g.dtype,
                       const_cast<char*>(KvHeadPointer(regions[part], g, b, s, h)),
                       const_cast<char*>(KvScalePointer(regions[part], g, b, s, h)));
        }
      }
    }
  }

  // Every sequence gets a random, non-consecutive set of block ids.
  std::vector<int32_t> ids(g.num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  std::vector<std::vector<int32_t>> tables;
  size_t next = 0;
  for (int32_t len : context_lens) {
    tables.emplace_back(ids.begin() + next,
                        ids.begin() + next + (len + c.block_size - 1) / c.block_size);
    next += tables.back().size();
  }
  const int64_t n = static_cast<int64_t>(specs.size());
  const int64_t q_stride = c.num_heads * head_dim + 16;  // rows need not be packed
  std::vector<float> q(n * q_stride);
  for (float& x : q) x = dist(rng);
  std::vector<AttentionQuery> queries;
  for (const QuerySpec& spec : specs) queries.push_back({tables[spec.seq].data(), spec.context});
  std::vector<float> out(n * c.num_heads * head_dim, std::nanf(""));
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  PagedAttentionCpu(q.data(), q_stride, out.data(), regions[0], regions[1], g, queries.data(), n,
                    c.num_heads, scale);
  // The same bits on 2 and 3 threads as on 1 (the tasks, and so every sum, do not
  // depend on how threads share them; ctest's default is 1 thread where the two cores
  // are hyperthreads), for another query, so that nothing kept from the call above can
  // pass for a result.
  const int threads_before = at::get_num_threads();
  std::vector<float> other_q(q.size());
  std::transform(q.begin(), q.end(), other_q.begin(), [](float x) { return -x; });
  for (const int threads : {2, 3}) {
    std::vector<float> shared(out.size(), std::nanf("")), alone(out.size(), std::nanf(""));
    at::set_num_threads(threads);
    PagedAttentionCpu(other_q.data(), q_stride, shared.data(), regions[0], regions[1], g,
                      queries.data(), n, c.num_heads, scale);
    at::set_num_threads(1);
    PagedAttentionCpu(other_q.data(), q_stride, alone.data(), regions[0], regions[1], g,
                      queries.data(), n, c.num_heads, scale);
    EXPECT_EQ(std::memcmp(shared.data(), alone.data(), out.size() * sizeof(float)), 0)
        << "on " << threads << " threads";
  }
  at::set_num_threads(threads_before);

  const int32_t group = c.num_heads / c.num_kv_heads;
  double worst_stored = 0, worst_exact = 0;
  for (int64_t i = 0; i < n; ++i) {
    const std::vector<int32_t>& table = tables[specs[i].seq];
    const int32_t context = specs[i].context;
    for (int32_t h = 0; h < c.num_heads; ++h) {
      const int32_t kvh = h / group;
      // Element d of position t's head vector: as stored (decoded, scaled) or exact.
      auto stored = [&](int part, int32_t t, int32_t d) -> double {
        const int32_t block = table[t / c.block_size], slot = t % c.block_size;
        return double{
                   DecodeKvElement(KvHeadPointer(regions[part], g, block, slot, kvh), d, g.dtype)} *
               KvScale(regions[part], g, block, slot, kvh);
      };
      auto unrounded = [&](int part, int32_t t, int32_t d) -> double {
        const int32_t block = table[t / c.block_size];
        return exact[part][block * g.block_elems() + (t % c.block_size) * g.token_elems() +
                           kvh * head_dim + d];
      };
      for (const bool as_stored : {true, false}) {
        std::vector<double> s(context);
        double mx = -1e300;
        for (int32_t t = 0; t < context; ++t) {
          double dot = 0;
          for (int32_t d = 0; d < head_dim; ++d) {
            dot += double{q[i * q_stride + h * head_dim + d]} *
                   (as_stored ? stored(0, t, d) : unrounded(0, t, d));
          }
          s[t] = dot * scale;
          mx = std::max(mx, s[t]);
        }
        double sum = 0;
        for (double& x : s) sum += (x = std::exp(x - mx));
        for (int32_t d = 0; d < head_dim; ++d) {
          double ref = 0;
          for (int32_t t = 0; t < context; ++t) {
            ref += s[t] / sum * (as_stored ? stored(1, t, d) : unrounded(1, t, d));
          }
          const float got = out[(i * c.num_heads + h) * head_dim + d];
          ASSERT_TRUE(std::isfinite(got)) << "query " << i << " head " << h << " dim " << d;
          double& worst = as_stored ? worst_stored : worst_exact;
          worst = std::max(worst, std::abs(got - ref));
        }
      }
    }
  }
  // bf16 read with bf16 dot products rounds q and the softmax weights to bf16 as well:
  // measured up to 1.2e-3 here; every other path reads the stored values exactly.
  const bool bf16_dot = c.dtype == KvDtype::kBFloat16 && PagedAttentionCpuBf16Dot(head_dim);
  EXPECT_LE(worst_stored, bf16_dot ? 2e-3 : 1e-5) << "the kernel misreads " << KvDtypeName(c.dtype);
  EXPECT_LE(worst_exact, StoredErrorBound(c.dtype) * rounding_slack)
      << KvDtypeName(c.dtype) << "'s rounding";
  char worst[64];
  std::snprintf(worst, sizeof(worst), "%.3g / %.3g", worst_stored, worst_exact);
  ::testing::Test::RecordProperty("worst_vs_stored_and_unrounded", worst);
}

// One decode query per sequence.
TEST_P(PagedAttentionCpuTest, MatchesNaiveDoubleAttention) {
  const std::vector<int32_t> lens = {1, 7, 33, 100, 257};
  std::vector<QuerySpec> specs;
  for (int32_t s = 0; s < static_cast<int32_t>(lens.size()); ++s) specs.push_back({s, lens[s]});
  CheckAgainstDoubleAttention(GetParam(), lens, specs);
}

// A step as the scheduler packs it: a whole 40-token prompt, a 20-token chunk after
// 49 cached positions, 17 prompt tokens after 99 (a full tile and one query), 15 (short
// of a tile: the one-query path) and a decode query; the prompts' queries go through
// the tile kernel where the CPU has one (bf16 with AVX512-BF16). The kernel must read
// the stored values as tightly as for decode queries; the dtype's own rounding gets
// 1.25x the decode bound: with 1-3 positions a query's output is nearly one V row, and
// this set has many such queries (measured up to 1.14x, on every path, int8's too).
TEST_P(PagedAttentionCpuTest, PromptQueriesMatchNaiveDoubleAttention) {
  const std::vector<int32_t> lens = {40, 69, 116, 30, 257};
  std::vector<QuerySpec> specs;
  for (int32_t t = 1; t <= 40; ++t) specs.push_back({0, t});
  specs.push_back({4, 257});
  for (int32_t t = 50; t <= 69; ++t) specs.push_back({1, t});
  for (int32_t t = 100; t <= 116; ++t) specs.push_back({2, t});
  for (int32_t t = 16; t <= 30; ++t) specs.push_back({3, t});
  CheckAgainstDoubleAttention(GetParam(), lens, specs, /*rounding_slack=*/1.25);
}

std::vector<Case> AllCases() {
  const Case shapes[] = {{1, 12, 12, 64}, {1, 12, 4, 64},  {1, 12, 1, 64},   {16, 12, 12, 64},
                         {16, 12, 4, 64}, {16, 12, 1, 64}, {32, 12, 12, 64}, {32, 12, 4, 64},
                         {32, 12, 1, 64}, {16, 8, 2, 128}, {16, 4, 4, 80},   {32, 12, 4, 128}};
  std::vector<Case> cases;
  for (KvDtype dtype : {KvDtype::kFloat32, KvDtype::kFloat16, KvDtype::kBFloat16, KvDtype::kInt8,
                        KvDtype::kFp8E4m3}) {
    for (Case c : shapes) {
      c.dtype = dtype;
      cases.push_back(c);
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(DtypesBlockSizesAndGroups, PagedAttentionCpuTest,
                         ::testing::ValuesIn(AllCases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return std::string(KvDtypeName(info.param.dtype)) + "_bs" +
                                  std::to_string(info.param.block_size) + "_group" +
                                  std::to_string(info.param.num_heads / info.param.num_kv_heads) +
                                  "_d" + std::to_string(info.param.head_dim);
                         });

// Each encoding against its definition: fp8 e4m3 round trips every finite code, rounds
// to the nearest code (ties to even) and saturates at 448; int8 maps the head's largest
// magnitude to +-127 and stays within half a step.
TEST(KvQuantTest, Fp8E4m3RoundTripsEveryCode) {
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7f) == 0x7f) continue;  // NaN
    const float x = DecodeFp8E4m3(static_cast<uint8_t>(code));
    if (x == 0.f) continue;  // -0 encodes as 0x80, +0 as 0x00: both fine
    EXPECT_EQ(EncodeFp8E4m3(x), code) << "code " << code << " = " << x;
  }
  EXPECT_EQ(DecodeFp8E4m3(0x7e), 448.f);
  EXPECT_EQ(DecodeFp8E4m3(0x01), std::ldexp(1.f, -9));  // the smallest subnormal
  EXPECT_EQ(DecodeFp8E4m3(0x08), std::ldexp(1.f, -6));  // the smallest normal
  EXPECT_EQ(EncodeFp8E4m3(1e6f), 0x7e);
  EXPECT_EQ(EncodeFp8E4m3(-1e6f), 0xfe);
  EXPECT_EQ(EncodeFp8E4m3(1.0625f), EncodeFp8E4m3(1.f));    // tie between 1 and 1.125: even
  EXPECT_EQ(EncodeFp8E4m3(1.1875f), EncodeFp8E4m3(1.25f));  // tie between 1.125 and 1.25
  EXPECT_EQ(DecodeFp8E4m3(EncodeFp8E4m3(1.07f)), 1.125f);   // nearest
}

TEST(KvQuantTest, NearestCodeForRandomValues) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-448.f, 448.f);
  for (int i = 0; i < 100000; ++i) {
    const float x = dist(rng) * (i % 2 ? 1.f : 1e-3f);
    const float got = DecodeFp8E4m3(EncodeFp8E4m3(x));
    float best = 0.f;
    for (int code = 0; code < 256; ++code) {
      if ((code & 0x7f) == 0x7f) continue;
      const float v = DecodeFp8E4m3(static_cast<uint8_t>(code));
      if (std::abs(v - x) < std::abs(best - x)) best = v;
    }
    ASSERT_EQ(std::abs(got - x), std::abs(best - x)) << x;
  }
}

TEST(KvQuantTest, Int8ScaleAndError) {
  const float x[5] = {0.5f, -2.54f, 1.f, 0.f, 2.53f};
  int8_t q[5];
  float scale = 0;
  EncodeKvHead(x, 5, KvDtype::kInt8, q, &scale);
  EXPECT_FLOAT_EQ(scale, 2.54f / 127);
  EXPECT_EQ(q[1], -127);
  for (int i = 0; i < 5; ++i) EXPECT_LE(std::abs(q[i] * scale - x[i]), scale / 2 + 1e-7f);
  const float zeros[3] = {0.f, 0.f, 0.f};
  EncodeKvHead(zeros, 3, KvDtype::kInt8, q, &scale);  // an all-zero head: scale 0, no NaN
  EXPECT_EQ(scale, 0.f);
  EXPECT_EQ(q[0], 0);
}

}  // namespace
}  // namespace kvpool
