// The CPU paged kernel against a naive double-precision attention over the same
// K/V, with shuffled, non-consecutive block tables.
#include "engine/paged_attention_cpu.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

namespace kvpool {
namespace {

struct Case {
  int32_t block_size;
  int32_t num_heads;
  int32_t num_kv_heads;
  int32_t head_dim = 64;  // 64 and 128 have AVX-512 kernels; others the portable loop
};

class PagedAttentionCpuTest : public ::testing::TestWithParam<Case> {};

TEST_P(PagedAttentionCpuTest, MatchesNaiveDoubleAttention) {
  const Case c = GetParam();
  const int32_t head_dim = c.head_dim;
  const std::vector<int32_t> context_lens = {1, 7, 33, 100, 257};
  std::mt19937 rng(1234 + c.block_size * 100 + c.num_kv_heads);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);

  PoolGeometry g;
  g.num_layers = 1;
  g.num_kv_heads = c.num_kv_heads;
  g.head_dim = head_dim;
  g.block_size = c.block_size;
  int64_t total_blocks = 0;
  for (int32_t len : context_lens) total_blocks += (len + c.block_size - 1) / c.block_size;
  g.num_blocks = total_blocks + 5;  // spare blocks that nobody references
  std::vector<float> pool(g.pool_bytes() / sizeof(float));
  for (float& x : pool) x = dist(rng);

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
  const int64_t n = static_cast<int64_t>(context_lens.size());
  const int64_t q_stride = c.num_heads * head_dim + 16;  // rows need not be packed
  std::vector<float> q(n * q_stride);
  for (float& x : q) x = dist(rng);
  std::vector<AttentionQuery> queries;
  for (int64_t i = 0; i < n; ++i) queries.push_back({tables[i].data(), context_lens[i]});
  std::vector<float> out(n * c.num_heads * head_dim, std::nanf(""));
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const float* k_region = pool.data() + g.region_offset(0, KvPart::kKey);
  const float* v_region = pool.data() + g.region_offset(0, KvPart::kValue);
  PagedAttentionCpu(q.data(), q_stride, out.data(), k_region, v_region, g, queries.data(), n,
                    c.num_heads, scale);

  const int32_t group = c.num_heads / c.num_kv_heads;
  double worst = 0;
  for (int64_t i = 0; i < n; ++i) {
    for (int32_t h = 0; h < c.num_heads; ++h) {
      const int32_t kvh = h / group;
      auto kv_at = [&](const float* region, int32_t pos) {
        const int32_t block = tables[i][pos / c.block_size];
        return region + block * g.block_elems() + (pos % c.block_size) * g.token_elems() +
               kvh * head_dim;
      };
      std::vector<double> s(context_lens[i]);
      double mx = -1e300;
      for (int32_t t = 0; t < context_lens[i]; ++t) {
        double dot = 0;
        for (int32_t d = 0; d < head_dim; ++d) {
          dot += double{q[i * q_stride + h * head_dim + d]} * kv_at(k_region, t)[d];
        }
        s[t] = dot * scale;
        mx = std::max(mx, s[t]);
      }
      double sum = 0;
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (int32_t d = 0; d < head_dim; ++d) {
        double ref = 0;
        for (int32_t t = 0; t < context_lens[i]; ++t) ref += s[t] / sum * kv_at(v_region, t)[d];
        const float got = out[(i * c.num_heads + h) * head_dim + d];
        ASSERT_TRUE(std::isfinite(got)) << "query " << i << " head " << h << " dim " << d;
        worst = std::max(worst, std::abs(got - ref));
      }
    }
  }
  EXPECT_LE(worst, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(BlockSizesAndGroups, PagedAttentionCpuTest,
                         ::testing::Values(Case{1, 12, 12}, Case{1, 12, 4}, Case{1, 12, 1},
                                           Case{16, 12, 12}, Case{16, 12, 4}, Case{16, 12, 1},
                                           Case{32, 12, 12}, Case{32, 12, 4}, Case{32, 12, 1},
                                           Case{16, 8, 2, 128}, Case{16, 4, 4, 80}),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return "bs" + std::to_string(info.param.block_size) + "_group" +
                                  std::to_string(info.param.num_heads / info.param.num_kv_heads) +
                                  "_d" + std::to_string(info.param.head_dim);
                         });

}  // namespace
}  // namespace kvpool
